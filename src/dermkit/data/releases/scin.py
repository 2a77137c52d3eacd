"""SCIN, Skin Condition Image Network (Ward et al., JAMA Network Open 7(11), e2446615, 2024), Google's
crowdsourced release 1.0.0, public in the Google Cloud Storage bucket ``dx-scin-public-data``
(github.com/google-research-datasets/scin).

Official layout (the bucket's ``dataset/`` folder): ``scin_cases.csv`` (one row per case: ``case_id,
source,release,year,age_group,sex_at_birth,fitzpatrick_skin_type`` (self-reported ``FST1``..``FST6``,
``NONE_IDENTIFIED`` or empty), the tick-box families ``race_ethnicity_*``, ``textures_*``,
``body_parts_*``, ``condition_symptoms_*``, ``other_symptoms_*`` (``YES`` or empty),
``related_category,condition_duration,image_{1,2,3}_path,image_{1,2,3}_shot_type,combined_race,...``),
``scin_labels.csv`` (one row per case: ``case_id``, ``dermatologist_gradable_for_skin_condition_{1,2,3}``,
``dermatologist_skin_condition_on_label_name`` and ``..._confidence`` (Python lists),
``weighted_skin_condition_label`` (a Python dict condition -> weight; ``{}`` when no dermatologist
gave a condition), ``dermatologist_gradable_for_fitzpatrick_skin_type_{1,2,3}``,
``dermatologist_fitzpatrick_skin_type_label_{1,2,3}`` (``FST1``..``FST6``), ``gradable_for_monk_skin_tone_
{india,us}`` and ``monk_skin_tone_label_{india,us}`` (1-10)) and the images ``dataset/images/<id>.png``,
named in ``image_N_path`` relative to the bucket root. Checked on a copy of both CSVs (see OFFICIAL).

Card rows: one per IMAGE (up to 3 per case), grouped by ``case_id`` so a case never spans two splits.
A path that would leave the release folder (absolute, ``..``, a link pointing outside) is refused.
An image file listed by several cases (the release has 15 such files) gets one row (its first
labelled case, in file order); ``also_in_cases`` names the others and all those cases form one group.

Diagnosis: the condition with the highest weight in ``weighted_skin_condition_label``; when several
share the highest weight, the first of them in the order the release writes the dict
(``condition_tied`` = 1 marks those rows; ``condition_weight`` is the winning weight). Cases whose
weighted label is ``{}`` (no dermatologist condition, mostly images judged not gradable) are left out
and counted in the notes. Classes: every condition that is some imported image's diagnosis (about 210
on the full release; the raw weighted label, names and confidences are kept).

Skin type: ``fitzpatrick`` (I-VI) is the dermatologists' estimate: the most frequent of the up-to-3
``dermatologist_fitzpatrick_skin_type_label_N``; without a majority (two different labels, or three)
the lower median of them (the middle one of three, the lighter of two). ``fitzpatrick_self_reported``
(I-VI) is the contributor's ``fitzpatrick_skin_type``; ``NONE_IDENTIFIED`` stays empty. All raw columns
are kept. ``monk_skin_tone`` (1-10) is ``monk_skin_tone_label_us``: the release documents neither
label as primary; the contributors were recruited in the US, so the US labellers' estimate is used, and
``monk_skin_tone_label_india`` is kept beside it. Tick boxes become 1/0 per family: 0 where another box
of the same family was ticked, empty where none of the family was ticked (not answered).
"""

from __future__ import annotations

import ast
import math
import os
import statistics
from pathlib import Path, PurePosixPath

import pandas as pd

from dermkit.data.metadata_csv import line_list
from dermkit.data.releases.common import Release, Source, path_problem, read_table, require_columns
from dermkit.errors import DataError, excerpt

ARCHIVES = ("dx-scin-public-data*.zip", "scin*.zip")
CASES, LABELS = "scin_cases.csv", "scin_labels.csv"
IMAGE_COLUMNS = tuple(f"image_{i}_path" for i in (1, 2, 3))
SHOT_COLUMNS = tuple(f"image_{i}_shot_type" for i in (1, 2, 3))
CASE_COLUMNS = ("case_id", *IMAGE_COLUMNS, *SHOT_COLUMNS, "fitzpatrick_skin_type", "age_group", "sex_at_birth")
DERM_FST = tuple(f"dermatologist_fitzpatrick_skin_type_label_{i}" for i in (1, 2, 3))
MONK = ("monk_skin_tone_label_us", "monk_skin_tone_label_india")
LABEL_COLUMNS = ("case_id", "weighted_skin_condition_label", *DERM_FST, *MONK)
LABEL_EXTRA = ("dermatologist_skin_condition_on_label_name", "dermatologist_skin_condition_confidence",
               *(f"dermatologist_gradable_for_skin_condition_{i}" for i in (1, 2, 3)))
FAMILIES = ("race_ethnicity_", "textures_", "body_parts_", "condition_symptoms_", "other_symptoms_")
CASE_METADATA = ("age_group", "sex_at_birth", "related_category", "condition_duration", "combined_race")
FST = {f"FST{i}": t for i, t in enumerate(("I", "II", "III", "IV", "V", "VI"), start=1)}
FST_NONE = {"NONE_IDENTIFIED", "NONE_SELECTED"}
# Counted on scin_cases.csv + scin_labels.csv of release 1.0.0 (see the module doc and the report).
OFFICIAL = {"cases": 5033, "images": 10407, "image_files": 10380, "labelled_cases": 3061}
GSUTIL = "gsutil -m cp -r gs://dx-scin-public-data/dataset DIR"


def _find(src: Source, name: str, what: str, column: str) -> Path:
    def ok(path: Path) -> bool:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            return column in fh.readline()
    return src.find([name], what, accept=ok)


def _fst(values: pd.Series, path: Path, column: str) -> pd.Series:
    """FST1..FST6 -> I..VI; empty / NONE_IDENTIFIED -> None; DataError naming the lines of other codes."""
    text = values.map(lambda v: str(v).strip() if pd.notna(v) else "")
    bad = ~text.isin([*FST, *FST_NONE, ""])
    if bad.any():
        raise DataError(f"{path} {line_list(text.index[bad] + 2)}, column '{column}': unknown code(s) "
                        f"{', '.join(map(repr, sorted(set(text[bad]))[:6]))}; the official codes are "
                        f"{', '.join(FST)} and NONE_IDENTIFIED (or empty)")
    return text.map(lambda v: FST.get(v)).astype(object)


def _monk(values: pd.Series, path: Path, column: str) -> pd.Series:
    def one(v):
        if pd.isna(v) or not str(v).strip():
            return ""
        try:
            number = float(str(v).strip())
        except ValueError:
            return None
        return str(int(number)) if number.is_integer() and 1 <= number <= 10 else None
    out = values.map(one)
    bad = out.isna()
    if bad.any():
        raise DataError(f"{path} {line_list(values.index[bad] + 2)}, column '{column}': "
                        f"{excerpt(values[bad].iloc[0])} is not a Monk skin tone (1 to 10)")
    return out.map(lambda v: v or None).astype(object)


def _weights(values: pd.Series, path: Path) -> list[dict]:
    out = []
    for idx, raw in values.items():
        text = "{}" if pd.isna(raw) else str(raw).strip()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                for k, w in value.items()):
            raise DataError(f"{path} line {idx + 2}, column 'weighted_skin_condition_label': {text[:60]!r} is not "
                            "a dict of condition -> weight (e.g. {'Eczema': 0.5, 'Psoriasis': 0.5}); is the file "
                            "corrupt?")
        out.append({k.strip(): float(w) for k, w in value.items()})
    return out


def _derm_fitzpatrick(labels: pd.DataFrame, path: Path) -> pd.Series:
    types = pd.DataFrame({c: _fst(labels[c], path, c) for c in DERM_FST})
    order = list(FST.values())

    def pick(row) -> str | None:
        given = sorted(order.index(v) for v in row if isinstance(v, str))
        return order[statistics.median_low(given)] if given else None  # = the majority when there is one
    return types.apply(pick, axis=1).astype(object)


def _ticks(cases: pd.DataFrame) -> dict[str, pd.Series]:
    out = {}
    for prefix in FAMILIES:
        cols = [c for c in cases.columns if c.startswith(prefix)]
        if not cols:
            continue
        ticked = cases[cols].map(lambda v: pd.notna(v) and str(v).strip() != "")
        answered = ticked.any(axis=1)
        for col in cols:
            out[col] = ticked[col].map(int).astype(str).where(answered, None).astype(object)
    return out


def parse_metadata(cases_path: Path, labels_path: Path) -> tuple[pd.DataFrame, dict]:
    """The two official CSVs as one row per (labelled case, image path), no image files needed.

    Returns the table (``path`` = the CSV's ``image_N_path``, ``csv_line``/``csv_column`` where it
    was read, ``diagnosis``, skin types, case metadata) and counts of what was read."""
    cases = read_table(cases_path, f"SCIN {CASES}")
    require_columns(cases, cases_path, CASE_COLUMNS, f"SCIN's {CASES}")
    labels = read_table(labels_path, f"SCIN {LABELS}")
    require_columns(labels, labels_path, LABEL_COLUMNS, f"SCIN's {LABELS}")
    for frame, path in ((cases, cases_path), (labels, labels_path)):
        frame["case_id"] = frame["case_id"].str.strip()
        empty = frame["case_id"].isna() | (frame["case_id"] == "")
        if empty.any():
            raise DataError(f"{path} {line_list(frame.index[empty] + 2)}: 'case_id' is empty; the file is corrupt")
        dupes = frame["case_id"][frame["case_id"].duplicated()]
        if len(dupes):
            raise DataError(f"{path} {line_list(dupes.index + 2)}: case_id {dupes.iloc[0]} is listed twice")
    unlabelled_ids = sorted(set(cases["case_id"]) - set(labels["case_id"]))
    if unlabelled_ids:
        lines = cases.index[cases["case_id"].isin(unlabelled_ids)] + 2
        raise DataError(f"{cases_path} {line_list(lines)}: case_id {unlabelled_ids[0]} has no row in "
                        f"{labels_path.name}; the two files are from different releases or truncated")
    weights = _weights(labels["weighted_skin_condition_label"], labels_path)
    top, tied, weight = [], [], []
    for w in weights:
        best = max(w.values()) if w else None
        names = [k for k, v in w.items() if v == best]
        top.append(names[0] if names else None)
        tied.append(str(int(len(names) > 1)) if names else None)
        weight.append(f"{best:g}" if best is not None else None)
    lab = pd.DataFrame({"case_id": labels["case_id"], "diagnosis": top, "condition_tied": tied,
                        "condition_weight": weight})
    lab["fitzpatrick"] = _derm_fitzpatrick(labels, labels_path).to_numpy()
    lab["monk_skin_tone"] = _monk(labels["monk_skin_tone_label_us"], labels_path, "monk_skin_tone_label_us").to_numpy()
    lab["monk_skin_tone_label_india"] = _monk(labels["monk_skin_tone_label_india"], labels_path,
                                              "monk_skin_tone_label_india").to_numpy()
    lab["monk_skin_tone_label_us"] = lab["monk_skin_tone"]
    for col in (*DERM_FST, "weighted_skin_condition_label", *LABEL_EXTRA):
        lab[col] = labels[col].to_numpy() if col in labels.columns else None
    lab = lab.set_index("case_id")

    meta = pd.DataFrame({"case_id": cases["case_id"]})
    meta["fitzpatrick_self_reported"] = _fst(cases["fitzpatrick_skin_type"], cases_path, "fitzpatrick_skin_type")
    meta["fitzpatrick_skin_type"] = cases["fitzpatrick_skin_type"]
    for col in CASE_METADATA:
        meta[col] = cases[col] if col in cases.columns else None
    for col, values in _ticks(cases).items():
        meta[col] = values
    labelled = cases["case_id"].map(lab["diagnosis"]).notna()
    rows = []
    for k, (pcol, scol) in enumerate(zip(IMAGE_COLUMNS, SHOT_COLUMNS), start=1):
        present = cases[pcol].notna() & (cases[pcol].str.strip() != "")
        part = meta[present & labelled].copy()
        part.insert(1, "path", cases.loc[part.index, pcol].str.strip())
        part.insert(2, "image_number", str(k))
        part.insert(3, "shot_type", cases.loc[part.index, scol])
        part["csv_line"] = part.index + 2
        part["csv_column"] = pcol
        rows.append(part)
    table = pd.concat(rows).sort_values(["csv_line", "image_number"], kind="stable").reset_index(drop=True)
    for col in lab.columns:
        table[col] = table["case_id"].map(lab[col]).to_numpy()
    n_images = int(sum((cases[c].notna() & (cases[c].str.strip() != "")).sum() for c in IMAGE_COLUMNS))
    all_paths = pd.concat([cases[c] for c in IMAGE_COLUMNS]).dropna().str.strip()
    stats = {"cases": len(cases), "images": n_images, "image_files": int(all_paths[all_paths != ""].nunique()),
             "labelled_cases": int(labelled.sum()), "unlabelled_cases": int((~labelled).sum()),
             "unlabelled_images": n_images - len(table)}
    return table, stats


def _resolve(src: Source, cases_path: Path, table: pd.DataFrame) -> list[Path | None]:
    """Each ``path`` as a file of the release: relative to the bucket root (the folder above
    ``dataset/``) or to the CSV's folder, else by file name anywhere in the release (a flattened copy)."""
    roots = [Path(os.path.realpath(r)) for r in src.roots]
    bases = [b for b in (cases_path.parent.parent, cases_path.parent)
             if any(Path(os.path.realpath(b)).is_relative_to(r) for r in roots)]
    by_name = src.by_name()
    out = []
    for rel, line, col in zip(table["path"], table["csv_line"], table["csv_column"]):
        problem = path_problem(rel, "the release folder")
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        found = None
        if problem is None:
            for base in bases:
                candidate = base.joinpath(*parts)
                if candidate.is_file():
                    if not any(Path(os.path.realpath(candidate)).is_relative_to(r) for r in roots):
                        problem = "points (through a link) outside the release folder"
                    found = candidate
                    break
        if problem is not None:
            raise DataError(f"{cases_path} line {line}, column '{col}': the image path {rel!r} {problem}; "
                            "refusing it (every image must lie inside the release folder). Is the file corrupt?")
        if found is None:
            hit = by_name.get(parts[-1].lower()) if parts else None
            if hit is not None and any(Path(os.path.realpath(hit)).is_relative_to(r) for r in roots):
                found = hit
        out.append(found)
    return out


def _group_cases(table: pd.DataFrame) -> pd.Series:
    """One group id per set of cases that share an image file (union-find over case ids)."""
    parent: dict[str, str] = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for _, ids in table.groupby("path", sort=False)["case_id"]:
        first = root(ids.iloc[0])
        for other in ids.iloc[1:]:
            parent[root(other)] = first
    return table["case_id"].map(root)


def read(src: Source) -> Release:
    cases_path = _find(src, CASES, "SCIN's case table (case_id, ..., image_1_path, ...)", "image_1_path")
    labels_path = _find(src, LABELS, "SCIN's dermatologist labels (case_id, weighted_skin_condition_label, ...)",
                        "weighted_skin_condition_label")
    table, stats = parse_metadata(cases_path, labels_path)
    if table.empty:
        raise DataError(f"{labels_path}: no case has a dermatologist condition label (weighted_skin_condition_label "
                        "is {} everywhere); nothing to import")
    found = _resolve(src, cases_path, table)
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        shown = "; ".join(f"line {table['csv_line'].iloc[i]} {table['csv_column'].iloc[i]} {table['path'].iloc[i]}"
                          for i in missing[:5])
        raise DataError(f"{cases_path}: {len(missing)} image(s) named in {CASES} are not in the release ({shown}"
                        f"{' ...' if len(missing) > 5 else ''}); download the whole dataset/ folder, e.g. "
                        f"`{GSUTIL}`, and pass DIR (or DIR/dataset)")
    table["_file"] = found
    groups = _group_cases(table)
    shared = table.groupby("path", sort=False)["case_id"].agg(list)
    also = table["path"].map(lambda p: ";".join(shared[p][1:]) or None)
    keep = ~table["path"].duplicated()
    repeated = int((shared.map(len) > 1).sum())
    table["also_in_cases"] = also
    table, groups = table[keep].reset_index(drop=True), groups[keep].reset_index(drop=True)
    files, rel, ids = {}, [], []
    for path, source in zip(table["path"], table["_file"]):
        parts = PurePosixPath(path.replace("\\", "/")).parts
        parts = parts[1:] if len(parts) > 1 and parts[0] == "dataset" else parts
        dest = "/".join(parts) if parts[0] == "images" else "images/" + "/".join(parts)
        files[dest] = source
        rel.append(dest)
        ids.append(PurePosixPath(dest).stem)
    table = table.drop(columns=["_file", "csv_line", "csv_column"]).rename(columns={"path": "source_path"})
    table.insert(0, "image", rel)
    table.insert(3, "image_id", ids)
    table["label_source"] = "dermatologist image review (weighted differential)"
    classes = sorted(table["diagnosis"].unique())
    card = {
        "name": "scin",
        "base_card": "scin",
        "description": "SCIN, Skin Condition Image Network (Ward et al., JAMA Netw. Open 2024), release 1.0.0 "
                       "imported by `dermkit data import scin`: crowdsourced smartphone photos, one row per image "
                       "(split grouped by case_id), diagnosis = the highest-weighted condition of the "
                       "dermatologists' weighted label (ties: the first written), dermatologist-estimated "
                       "`fitzpatrick`, self-reported `fitzpatrick_self_reported`, `monk_skin_tone` (US labellers).",
        "classes": classes,
    }
    full = all(stats[k] == v for k, v in OFFICIAL.items())
    notes = [
        f"read {cases_path.name} + {labels_path.name}: {stats['cases']} cases with {stats['images']} images "
        f"({stats['image_files']} distinct files)",
        f"{stats['unlabelled_cases']} cases ({stats['unlabelled_images']} images) have no dermatologist condition "
        "(weighted_skin_condition_label {}): left out",
        f"imported {len(table)} images of {stats['labelled_cases']} labelled cases ({len(classes)} conditions as "
        f"classes); {int((table['condition_tied'] == '1').sum())} images have a tie for the highest weight "
        "(condition_tied = 1: the first written wins); the split is grouped by case_id",
        (f"read the official full release ({OFFICIAL['cases']:,} cases, {OFFICIAL['images']:,} images)" if full else
         f"read {stats['cases']:,} of the {OFFICIAL['cases']:,} cases ({stats['images']:,} of "
         f"{OFFICIAL['images']:,} images) of the official release: a partial copy"),
    ]
    if repeated:
        hidden = stats["labelled_cases"] - table["case_id"].nunique()
        notes.append(f"{repeated} image file(s) are listed by several labelled cases: one row each (its first case; "
                     "also_in_cases names the others, and those cases share one split group)"
                     + (f"; {hidden} case(s) show only such images and appear only in also_in_cases" if hidden else ""))
    return Release(table=table, files=files, card=card, notes=notes, group_keys=groups)
