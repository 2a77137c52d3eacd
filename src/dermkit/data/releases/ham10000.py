"""HAM10000 as published on Harvard Dataverse (doi:10.7910/DVN/DBW86T).

Official layout: ``HAM10000_metadata`` (CSV; Dataverse also serves it as a tab-separated
``.tab``) with ``lesion_id,image_id,dx,dx_type,age,sex,localization`` and the 10,015 JPEGs in
``HAM10000_images_part_1.zip`` / ``HAM10000_images_part_2.zip`` (or their extracted folders).
The optional ``HAM10000_segmentations_lesion_tschandl.zip`` adds a ``mask`` column.
HAM10000 has no official split (it is the ISIC 2018 Task 3 training set): the split is grouped
by lesion and stratified by class.
"""

from __future__ import annotations

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, map_codes, read_table, row_origins
from dermkit.errors import DataError

ARCHIVES = ("HAM10000_images_part*.zip", "HAM10000_segmentations*.zip", "HAM10000*.zip")
METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab", "HAM10000_metadata.txt")
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
DX = {c: c for c in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")}
MALIGNANT = ("akiec", "bcc", "mel")


def find_images(src: Source, ids: pd.Series, where: str) -> dict[str, object]:
    """ISIC image id -> JPEG of the release; DataError naming the ids that are missing."""
    images = src.images((".jpg", ".jpeg", ".png"))
    missing = [i for i in ids if i not in images]
    if missing:
        lines = [int(ix) + 2 for ix in ids.index[ids.isin(missing)]]
        raise DataError(
            f"{where} {line_list(lines)}: {len(missing)} image(s) listed but not in the release "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); add the missing image "
            "archives/folders to --from (all parts of the release)"
        )
    return images


def read(src: Source) -> Release:
    path = src.find(METADATA_NAMES, "HAM10000's metadata, from Harvard Dataverse doi:10.7910/DVN/DBW86T")
    meta = read_table(path, "HAM10000_metadata", ids=("image_id",), columns=COLUMNS)
    diagnosis = map_codes(meta["dx"], DX, path, "dx")
    images = find_images(src, meta["image_id"], str(path))
    masks = {k[: -len("_segmentation")]: v for k, v in src.images((".png",)).items() if k.endswith("_segmentation")}
    files, rel, mask_rel = {}, [], []
    for image_id in meta["image_id"]:
        image = images[image_id]
        dest = f"images/{image_id}{image.suffix.lower()}"
        files[dest] = image
        rel.append(dest)
        if image_id in masks:
            mdest = f"masks/{image_id}_segmentation.png"
            files[mdest] = masks[image_id]
            mask_rel.append(mdest)
        else:
            mask_rel.append(None)
    table = pd.DataFrame({"image": rel, "diagnosis": diagnosis.to_numpy()})
    for col in ("image_id", "lesion_id", "dx_type", "age", "sex", "localization"):
        table[col] = meta[col].to_numpy()
    notes = [f"read {path.name}: {len(meta)} images, {meta['lesion_id'].nunique()} lesions"]
    if any(m is not None for m in mask_rel):
        table["mask"] = mask_rel
        notes.append(f"lesion masks for {sum(m is not None for m in mask_rel)} images")
    card = {
        "name": "ham10000",
        "base_card": "ham10000",
        "description": "HAM10000 (Tschandl et al., Sci. Data 2018) imported from the official Harvard Dataverse "
                       "release by `dermkit data import ham10000`: original-resolution JPEGs, the official "
                       "metadata; split grouped by lesion_id and stratified by diagnosis (the release has no "
                       "official split).",
    }
    return Release(table=table, files=files, card=card, malignant=MALIGNANT, notes=notes,
                   origin=row_origins(src, path, meta))
