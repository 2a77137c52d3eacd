"""Fitzpatrick17k (Groh et al., CVPR Workshops 2021) from github.com/mattgroh/fitzpatrick17k.

Official layout: one table, ``fitzpatrick17k.csv`` (repository root; the current version is the
one of commit 9865ce95b4b2035a1b311644ca00e028d1c4e74c, July 2022, 16,577 rows) with the columns
``md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,three_partition_label,
qc,url,url_alphanum``:

* ``md5hash`` names the image (the authors' ``train.py`` reads ``<image_dir>/<md5hash>``; their
  image folder holds ``<md5hash>.jpg``); every md5hash is listed once in the official file;
* ``fitzpatrick_scale``: Fitzpatrick type 1-6 from Scale AI's annotators, ``-1`` unknown;
  ``fitzpatrick_centaur``: the same from Centaur Labs (added in 2022), ``-1`` unknown;
* ``label``: one of 114 skin conditions; ``nine_partition_label`` and ``three_partition_label``
  (benign / malignant / non-neoplastic) group them;
* ``qc``: the dermatologists' quality check of a 504-image subset (``1 Diagnostic`` ...
  ``5 Potentially``), empty elsewhere;
* ``url``: where the image is published (dermaamin.com, atlasdermatologico.com.br; 41 rows have
  none); ``url_alphanum``: the URL made a file name.

The images are not distributed, only their URLs: ``dermkit data fetch fitzpatrick17k`` downloads
them into ``images/<md5hash>.<ext>`` (:mod:`dermkit.data.url_images`) and records dead links in
``missing.csv``. The import reads ``fitzpatrick17k.csv`` and the images found anywhere in the folder
or zip named ``<md5hash>.<image extension>`` (a copy obtained from the authors works too). Rows
whose image is absent are left out of the card and listed in the card's ``missing_images.csv``
(md5hash, url, reason: from ``missing.csv`` when there is one, else "not downloaded").

Card: ``diagnosis`` = ``three_partition_label``; ``label`` is renamed ``condition`` (``label`` is the
card's class-index column) and kept with ``nine_partition_label`` in metadata.csv (documented in the
packaged card, not declared as metadata features: they determine the diagnosis). ``fitzpatrick``
(I-VI, empty for -1) from ``fitzpatrick_scale`` per dermkit's skin-type convention, the raw
``fitzpatrick_scale`` and ``fitzpatrick_centaur`` kept; ``atlas`` says which site published the
image. No patient ids and no official split: the split is grouped by image (md5hash; identical
and near-duplicate images are grouped by the import) and stratified by diagnosis.

Counts (:data:`OFFICIAL`) checked on fitzpatrick17k.csv of commit 9865ce9 with :func:`parse`.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from dermkit.data.metadata_csv import line_list, read_metadata
from dermkit.data.releases.common import Release, Source, map_codes, read_table, require_columns
from dermkit.errors import DataError, excerpt
from dermkit.io import write_csv

ARCHIVES = ("fitzpatrick17k*.zip", "images*.zip")
CSV_NAME = "fitzpatrick17k.csv"
COLUMNS = ("md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
           "three_partition_label", "url")
OPTIONAL = ("qc", "url_alphanum")
CLASSES = {c: c for c in ("benign", "malignant", "non-neoplastic")}
NINE = {c: c for c in ("benign dermal", "benign epidermal", "benign melanocyte", "genodermatoses", "inflammatory",
                       "malignant cutaneous lymphoma", "malignant dermal", "malignant epidermal",
                       "malignant melanoma")}
FITZPATRICK = {"1": "I", "2": "II", "3": "III", "4": "IV", "5": "V", "6": "VI", "-1": None}
ATLASES = (("dermaamin", "dermaamin"), ("atlasdermatologico", "atlas_dermatologico"))
# The official full release: fitzpatrick17k.csv at commit 9865ce95b4b2035a1b311644ca00e028d1c4e74c
# (16,577 rows, 114 conditions with 53 to 653 images each, as the README says).
OFFICIAL = {
    "images": 16577,
    "conditions": 114,
    "three_partition_label": {"benign": 2234, "malignant": 2263, "non-neoplastic": 12080},
    "nine_partition_label": {"benign dermal": 1067, "benign epidermal": 931, "benign melanocyte": 236,
                             "genodermatoses": 1194, "inflammatory": 10886, "malignant cutaneous lymphoma": 182,
                             "malignant dermal": 156, "malignant epidermal": 1352, "malignant melanoma": 573},
    "fitzpatrick_scale": {"1": 2947, "2": 4808, "3": 3308, "4": 2781, "5": 1533, "6": 635, "-1": 565},
    "fitzpatrick_centaur": {"1": 5561, "2": 3180, "3": 2934, "4": 1974, "5": 1293, "6": 562, "-1": 1073},
    "no_url": 41,  # empty url (their url_alphanum names dermaamin.com)
    "url_hosts": {"www.dermaamin.com": 12631, "atlasdermatologico.com.br": 3905},
}
FETCH_HINT = ("the release distributes only image URLs: download the images with `dermkit data fetch "
              "fitzpatrick17k --accept-licence --record-checksums` (they land in "
              "$DERMKIT_CACHE/downloads/fitzpatrick17k/images/<md5hash>.jpg) and import that folder, or pass the "
              "folder that holds fitzpatrick17k.csv and the images named <md5hash>.jpg")


def _is_f17k(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline()
    return "md5hash" in header


def _atlas(url, alphanum) -> str | None:
    host = urlsplit(str(url)).netloc.lower() if isinstance(url, str) and url.strip() else ""
    text = host or (str(alphanum).lower() if isinstance(alphanum, str) else "")
    return next((name for needle, name in ATLASES if needle in text), None)


def parse(path: Path) -> pd.DataFrame:
    """fitzpatrick17k.csv as the card's columns, one row per image (no image files needed).

    Columns: md5hash, diagnosis, condition, nine_partition_label, fitzpatrick, fitzpatrick_scale,
    fitzpatrick_centaur, qc, atlas, url, url_alphanum. DataError naming the file, column and
    line for a wrong layout, an unknown code or an md5hash listed twice."""
    path = Path(path)
    meta = read_table(path, "Fitzpatrick17k fitzpatrick17k.csv")
    if "fitzpatrick" in meta.columns and "fitzpatrick_scale" not in meta.columns:
        raise DataError(
            f"{path} line 1 (header): column 'fitzpatrick' instead of 'fitzpatrick_scale' and "
            "'fitzpatrick_centaur': this is the April 2021 version of fitzpatrick17k.csv. Use the current one "
            "(github.com/mattgroh/fitzpatrick17k, commit 9865ce9 or later; `dermkit data fetch fitzpatrick17k` "
            "downloads it)")
    require_columns(meta, path, COLUMNS, "Fitzpatrick17k's fitzpatrick17k.csv")
    md5 = meta["md5hash"].fillna("").str.strip().str.lower()
    bad = ~md5.str.fullmatch(r"[0-9a-f]{32}")
    if bad.any():
        raise DataError(f"{path} {line_list(meta.index[bad] + 2)}, column 'md5hash': {excerpt(md5[bad].iloc[0])} is "
                        "not a 32-digit hex md5hash (it names the image file); the file is corrupt")
    twice = md5.duplicated(keep=False)
    if twice.any():
        raise DataError(f"{path} {line_list(meta.index[twice] + 2)}: md5hash {md5[twice].iloc[0]} is listed more "
                        "than once (the official file lists each image once); the file is corrupt or was edited")
    diagnosis = map_codes(meta["three_partition_label"].str.strip(), CLASSES, path, "three_partition_label")
    nine = map_codes(meta["nine_partition_label"].str.strip(), NINE, path, "nine_partition_label")
    condition = meta["label"].str.strip()
    empty = condition.isna() | (condition == "")
    if empty.any():
        raise DataError(f"{path} {line_list(meta.index[empty] + 2)}, column 'label': empty condition; the file is "
                        "corrupt")
    scale = meta["fitzpatrick_scale"].fillna("").str.strip()
    unknown = ~scale.isin([*FITZPATRICK, ""])
    if unknown.any():
        shown = ", ".join(repr(v) for v in sorted(set(scale[unknown]))[:6])
        raise DataError(f"{path} {line_list(meta.index[unknown] + 2)}, column 'fitzpatrick_scale': unknown code(s) "
                        f"{shown}; the official codes are 1 to 6 and -1 (unknown)")
    def optional(col):
        return meta[col].to_numpy() if col in meta.columns else None

    return pd.DataFrame({
        "md5hash": md5.to_numpy(),
        "diagnosis": diagnosis.to_numpy(),
        "condition": condition.to_numpy(),
        "nine_partition_label": nine.to_numpy(),
        "fitzpatrick": [FITZPATRICK.get(v) for v in scale],
        "fitzpatrick_scale": meta["fitzpatrick_scale"].to_numpy(),
        "fitzpatrick_centaur": meta["fitzpatrick_centaur"].to_numpy(),
        "qc": optional("qc"),
        "atlas": [_atlas(u, a) for u, a in zip(meta["url"], meta["url_alphanum"] if "url_alphanum" in meta.columns
                                               else [None] * len(meta))],
        "url": meta["url"].to_numpy(),
        "url_alphanum": optional("url_alphanum"),
    })


def compare_official(table: pd.DataFrame) -> list[str]:
    """How the parsed table differs from :data:`OFFICIAL` ([] when it is the official full list)."""
    out = []
    if len(table) != OFFICIAL["images"]:
        out.append(f"{len(table)} rows, the official file has {OFFICIAL['images']}")
    if table["condition"].nunique() != OFFICIAL["conditions"]:
        out.append(f"{table['condition'].nunique()} conditions, the official file has {OFFICIAL['conditions']}")
    for column, source in (("three_partition_label", "diagnosis"), ("nine_partition_label", "nine_partition_label"),
                           ("fitzpatrick_scale", "fitzpatrick_scale"), ("fitzpatrick_centaur", "fitzpatrick_centaur")):
        got = table[source].fillna("").astype(str).str.strip().value_counts().to_dict()
        want = OFFICIAL[column]
        diff = [f"{k} {got.get(k, 0)} (official {v})" for k, v in want.items() if got.get(k, 0) != v]
        if diff:
            out.append(f"{column}: {', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}")
    return out


def _missing_reasons(src: Source) -> dict[str, str]:
    def ok(path: Path) -> bool:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline()
        return "md5hash" in header and "reason" in header

    path = src.find(["missing.csv"], "", required=False, accept=ok)
    if path is None:
        return {}
    try:
        frame = read_metadata(path)  # header only when the last fetch found no dead link
    except DataError as exc:
        raise DataError(f"missing.csv of `dermkit data fetch fitzpatrick17k`: {exc}") from None
    if not {"md5hash", "reason"} <= set(frame.columns):
        return {}
    return {str(k).strip().lower(): str(r) for k, r in zip(frame["md5hash"], frame["reason"].fillna(""))}


def read(src: Source) -> Release:
    path = src.find([CSV_NAME], "Fitzpatrick17k's table, fitzpatrick17k.csv from github.com/mattgroh/fitzpatrick17k",
                    accept=_is_f17k)
    table = parse(path)
    differs = compare_official(table)
    wanted = set(table["md5hash"])
    found = {stem.lower(): f for stem, f in src.images().items() if stem.lower() in wanted}
    if not found:
        raise DataError(f"{src.path}: none of the {len(table)} images listed in {path.name} is there "
                        f"(<md5hash>.jpg, e.g. {table['md5hash'].iloc[0]}.jpg); {FETCH_HINT}")
    present = table["md5hash"].isin(found)
    reasons = _missing_reasons(src)
    absent = table[~present]
    missing = pd.DataFrame({"md5hash": absent["md5hash"].to_numpy(), "url": absent["url"].to_numpy(),
                            "reason": [reasons.get(k) or "not downloaded" for k in absent["md5hash"]]})
    table = table[present].reset_index(drop=True)
    files: dict[str, Path] = {}
    rel = []
    for key in table["md5hash"]:
        image = found[key]
        dest = f"images/{key}{image.suffix.lower()}"
        files[dest] = image
        rel.append(dest)
    table.insert(0, "image", rel)
    src.work.mkdir(parents=True, exist_ok=True)
    files["missing_images.csv"] = write_csv(src.work / "missing_images.csv", missing)
    card = {
        "name": "fitzpatrick17k",
        "base_card": "fitzpatrick17k",
        "description": "Fitzpatrick17k (Groh et al., CVPR Workshops 2021) imported from fitzpatrick17k.csv and the "
                       "images downloaded from its URLs by `dermkit data import fitzpatrick17k`: clinical atlas "
                       "photos, diagnosis = three_partition_label (benign / malignant / non-neoplastic), the 114 "
                       "conditions in `condition`, Fitzpatrick type in `fitzpatrick`; split grouped by image and "
                       f"stratified by diagnosis (no official split). {len(table)} of the {OFFICIAL['images']} "
                       "listed images are present (missing_images.csv lists the others).",
    }
    counts = table["diagnosis"].value_counts()
    per_class = ", ".join(f"{counts.get(c, 0)} {c}" for c in CLASSES)
    listing = ("the official full list (16,577 images, 114 conditions, per-class and Fitzpatrick counts as "
               "published)" if not differs else "NOT the official full list: " + "; ".join(differs))
    notes = [f"read {path.name}: {len(present)} rows, {listing}"]
    full = not differs and not len(missing)
    if full:
        notes.append(f"all {OFFICIAL['images']:,} images present: the official full release ({per_class})")
    else:
        why: dict[str, int] = {}
        for reason in missing["reason"]:
            head = re.sub(r"\s*\(.*$", "", reason)
            why[head] = why.get(head, 0) + 1
        shown = ", ".join(f"{n} {r}" for r, n in sorted(why.items(), key=lambda kv: -kv[1])[:5])
        notes.append(f"read {len(table):,} of the {OFFICIAL['images']:,} images of the official release: a partial "
                     f"copy ({per_class}); {len(missing):,} left out, listed with the reason in "
                     f"missing_images.csv ({shown or 'none'})")
    no_type = int(table["fitzpatrick"].isna().sum())
    notes.append(f"fitzpatrick (I-VI) from fitzpatrick_scale: {no_type} of {len(table)} images without a type "
                 "(-1 in the release)")
    return Release(table=table, files=files, card=card, malignant=("malignant",), notes=notes)
