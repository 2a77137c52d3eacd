"""A datasheet per dataset: the data items of the CLEAR Derm checklist that a card can answer.

:func:`datasheet` computes, from the card and its metadata.csv only (no image is decoded), what a
reader of a dermatology AI paper needs to judge the data (CLEAR Derm, Daneshjou et al., JAMA
Dermatology 2022): image type, source and licence, how the labels were made, class counts per
split, the partition level and leaks of groups across splits, skin type (Fitzpatrick / Monk),
age, sex and body site, declared duplicates and the exclusion list. :func:`datasheet_markdown`
and :func:`datasheet_html` render it; :func:`save_datasheet` writes datasheet.md / .html / .json.

Every count is over all rows of metadata.csv (excluded rows included; the exclusion list is
summarised on its own). Metadata cells read as missing are the missing-value tokens, the card's
``missing_values`` and the metadata "unknown" words (:func:`dermkit.values.is_unknown`).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from dermkit.data.card_schema import SPLITS
from dermkit.data.skin_type import (
    FITZPATRICK_COLUMNS,
    FITZPATRICK_ORDER,
    FITZPATRICK_TYPES,
    MONK_COLUMNS,
    find_column,
    fitzpatrick_type,
    monk_tone,
)
from dermkit.io import json_ready, write_json, write_text
from dermkit.values import is_unknown

__all__ = ["datasheet", "datasheet_markdown", "datasheet_html", "save_datasheet", "fitzpatrick_type",
           "FITZPATRICK_COLUMNS", "LABEL_SOURCE_COLUMNS"]

NOT_STATED = "not stated in the card"
NOT_RECORDED = "not recorded"
LABEL_SOURCE_COLUMNS = ("dx_type", "diagnosis_confirm_type", "diagnosis_method", "label_source", "ground_truth",
                        "biopsed", "biopsied", "biopsy")
AGE_COLUMNS = ("age", "age_approximate", "age_approx", "patient_age")
SEX_COLUMNS = ("sex", "gender", "patient_sex")
SITE_COLUMNS = ("localization", "location", "region", "anatom_site_general", "anatom_site_general_challenge",
                "anatomic_site", "body_site", "site")
AGE_BANDS = (("<30", None, 30), ("30-44", 30, 45), ("45-59", 45, 60), ("60-74", 60, 75), (">=75", 75, None))
TOP_SITES = 10
# HAM10000's dx_type codes in words.
LABEL_SOURCE_WORDS = {"histo": "histopathology", "follow_up": "follow-up", "consensus": "expert consensus",
                      "confocal": "confocal microscopy"}
BIOPSY_WORDS = {"true": "biopsy (histopathology)", "false": "no biopsy (clinical diagnosis)"}
IMAGE_TYPES = {"dermoscopy": "dermoscopic", "clinical": "clinical", "mixed": "both (dermoscopic and clinical)"}
CLEAR_DERM_ITEMS = (
    ("image type", "identity: dermoscopic / clinical / both"),
    ("image source, licence and citation", "identity"),
    ("sample size and diagnoses (class distribution per partition)", "classes"),
    ("dataset partitions: level (lesion / patient / image) and overlap", "partition"),
    ("ground truth: how the diagnosis was made", "label source"),
    ("skin tone (Fitzpatrick / Monk) distribution", "skin type"),
    ("patient demographics (age, sex)", "demographics"),
    ("anatomic location", "demographics: body site"),
    ("duplicates and excluded images", "duplicates"),
)


# --------------------------------------------------------------------------- helpers
def _present(series: pd.Series, extra=()) -> pd.Series:
    """Bool mask: the cell holds a value (not missing, not an "unknown" word)."""
    return ~series.map(lambda v: is_unknown(v, extra)).astype(bool)


def _counts(values: pd.Series, order=None) -> dict[str, int]:
    counts = values.value_counts()
    keys = list(order) if order is not None else sorted(counts.index, key=lambda k: (-counts[k], str(k)))
    return {str(k): int(counts.get(k, 0)) for k in keys}


def _shares(counts: dict[str, int], total: int) -> dict[str, float]:
    return {k: (v / total if total else 0.0) for k, v in counts.items()}


def _split_order(table: pd.DataFrame) -> list[str]:
    if "split" not in table.columns:
        return []
    present = [str(s) for s in table["split"].dropna().unique()]
    return [s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)


def _per_split(table: pd.DataFrame, values: pd.Series, order=None) -> dict[str, dict[str, int]]:
    """Counts of ``values`` (indexed like ``table``, missing dropped) per split."""
    out = {}
    for split in _split_order(table):
        out[split] = _counts(values[table["split"] == split], order)
    return out


# --------------------------------------------------------------------------- sections
def _identity(card, table: pd.DataFrame) -> dict:
    second = card.second_view_column if card.second_view_column in table.columns else None
    image_type = IMAGE_TYPES.get(card.modality or "", NOT_STATED)
    if second is not None:
        image_type = f"both: dermoscopic (`image`) and clinical (`{second}`)"
    extra = {str(k).casefold(): v for k, v in card.extra.items()}
    stated = {key: (str(extra[key]).strip() if extra.get(key) else NOT_STATED)
              for key in ("source", "citation", "url")}
    out = {
        "name": card.name,
        "description": card.description or NOT_STATED,
        "modality": card.modality or NOT_STATED,
        "image_type": image_type,
        "licence": (str(card.license).strip() if card.license else NOT_STATED),
        **stated,
        "rows": int(len(table)),
        "splits": {s: int(n) for s, n in _counts(table["split"].dropna(), _split_order(table)).items()}
        if "split" in table.columns else {},
    }
    if second is not None:
        out["second_view_column"] = second
        out["second_view_images"] = int(_present(table[second]).sum())
    return out


def _classes(card, table: pd.DataFrame) -> dict:
    classes = card.classes
    diagnosis = table["diagnosis"] if "diagnosis" in table.columns else pd.Series(index=table.index, dtype=object)
    per_split = _per_split(table, diagnosis.dropna(), classes)
    return {
        "classes": classes,
        "class_names": card.class_names,
        "per_split": per_split,
        "total": _counts(diagnosis.dropna(), classes),
        "missing": int(diagnosis.isna().sum()),
    }


def _partition(card, table: pd.DataFrame) -> dict:
    column = card.group_column if card.group_column in table.columns else None
    name = (column or "").casefold()
    if column is None:
        level = "image"
    elif "patient" in name or "subject" in name:
        level = "patient"
    elif "lesion" in name or "case" in name:  # a Derm7pt case is one lesion
        level = "lesion"
    elif column == card.id_column or name in {"image", "image_id", "img_id", "isic_id"}:
        level = "image"
    else:
        level = f"group (column {column})"
    out: dict = {"level": level, "group_column": column}
    if column is None:
        out.update(groups=int(len(table)), images_per_group_mean=1.0 if len(table) else 0.0,
                   images_per_group_max=1 if len(table) else 0, groups_across_splits=0, rows_without_group=0)
        return out
    groups = table[column]
    known = table[groups.notna()]
    sizes = known.groupby(column).size()
    across = known.groupby(column)["split"].nunique() if "split" in table.columns else pd.Series(dtype=int)
    out.update(
        groups=int(len(sizes)),
        images_per_group_mean=float(sizes.mean()) if len(sizes) else 0.0,
        images_per_group_max=int(sizes.max()) if len(sizes) else 0,
        groups_with_several_images=int((sizes > 1).sum()),
        groups_across_splits=int((across > 1).sum()),
        rows_without_group=int(groups.isna().sum()),
    )
    return out


def _label_source(card, table: pd.DataFrame) -> dict:
    column = find_column(table, LABEL_SOURCE_COLUMNS)
    if column is None:
        return {"column": None, "recorded": False, "note": NOT_RECORDED}
    raw = table[column]
    present = _present(raw, card.missing_values)
    text = raw[present].astype(str).str.strip()
    words = BIOPSY_WORDS if column.casefold() in {"biopsed", "biopsied", "biopsy"} else LABEL_SOURCE_WORDS
    values = text.map(lambda v: words.get(v.casefold(), v))
    counts = _counts(values)
    n = int(present.sum())
    return {"column": column, "recorded": True, "counts": counts, "shares": _shares(counts, n), "n": n,
            "missing": int(len(table) - n), "missing_share": (len(table) - n) / len(table) if len(table) else 0.0,
            "per_split": _per_split(table, values, list(counts))}


#: Skin-tone labels on a release's own scale (shown, never mapped to Fitzpatrick).
OTHER_TONE_COLUMNS = ("skin_tone_class",)


def _skin_type(card, table: pd.DataFrame) -> dict:
    out: dict = {}
    column = find_column(table, FITZPATRICK_COLUMNS)
    if column is None:
        out["fitzpatrick"] = {"column": None, "recorded": False, "note": NOT_RECORDED}
    else:
        raw = table[column]
        mapped = raw.map(fitzpatrick_type)
        missing = raw.map(lambda v: is_unknown(v, card.missing_values)).astype(bool)
        unreadable = int((mapped.isna() & ~missing).sum())
        # single types always listed; the groups (I-II, ...) only where the release records groups
        order = [t for t in FITZPATRICK_ORDER if t in FITZPATRICK_TYPES or bool((mapped == t).any())]
        counts = _counts(mapped.dropna(), order)
        out["fitzpatrick"] = {
            "column": column, "recorded": True, "counts": counts, "n": int(mapped.notna().sum()),
            "shares": _shares(counts, int(mapped.notna().sum())), "missing": int(missing.sum()),
            "missing_share": float(missing.mean()) if len(table) else 0.0, "unreadable": unreadable,
            "per_split": _per_split(table, mapped.dropna(), order),
        }
    monk = find_column(table, MONK_COLUMNS)
    if monk is None:
        out["monk"] = {"column": None, "recorded": False, "note": NOT_RECORDED}
    else:
        raw = table[monk]
        tone = raw.where(_present(raw, card.missing_values)).map(monk_tone)
        valid = tone.dropna().astype(int)
        counts = _counts(valid, range(1, 11))
        out["monk"] = {"column": monk, "recorded": True, "counts": counts, "n": int(len(valid)),
                       "missing": int(len(table) - len(valid)),
                       "missing_share": (len(table) - len(valid)) / len(table) if len(table) else 0.0}
    # A release's own skin-tone label on another scale (MILK10k's skin_tone_class, 0 very dark - 5 very
    # light): shown as it is, never read as a Fitzpatrick type.
    other = find_column(table, OTHER_TONE_COLUMNS)
    if other is None:
        out["other"] = {"column": None, "recorded": False}
    else:
        raw = table[other]
        present = _present(raw, card.missing_values)
        values = raw[present].astype(str).str.strip()
        out["other"] = {"column": other, "recorded": True, "counts": _counts(values, sorted(values.unique())),
                        "n": int(present.sum()), "missing": int((~present).sum()),
                        "missing_share": float((~present).mean()) if len(table) else 0.0}
    return out


def _age(card, table: pd.DataFrame) -> dict:
    column = find_column(table, AGE_COLUMNS)
    if column is None:
        return {"column": None, "recorded": False, "note": NOT_RECORDED}
    raw = table[column]
    age = pd.to_numeric(raw.where(_present(raw, card.missing_values)), errors="coerce").dropna()
    bands = {}
    for label, low, high in AGE_BANDS:
        inside = pd.Series(True, index=age.index)
        if low is not None:
            inside &= age >= low
        if high is not None:
            inside &= age < high
        bands[label] = int(inside.sum())
    n = int(len(age))
    return {"column": column, "recorded": True, "n": n, "missing": int(len(table) - n),
            "missing_share": (len(table) - n) / len(table) if len(table) else 0.0,
            "median": float(age.median()) if n else None,
            "q1": float(age.quantile(0.25)) if n else None, "q3": float(age.quantile(0.75)) if n else None,
            "min": float(age.min()) if n else None, "max": float(age.max()) if n else None, "bands": bands}


def _categorical(card, table: pd.DataFrame, names, top: int | None = None) -> dict:
    column = find_column(table, names)
    if column is None:
        return {"column": None, "recorded": False, "note": NOT_RECORDED}
    raw = table[column]
    present = _present(raw, card.missing_values)
    values = raw[present].astype(str).str.strip().str.casefold()
    counts = _counts(values)
    n = int(present.sum())
    out = {"column": column, "recorded": True, "n": n, "missing": int(len(table) - n),
           "missing_share": (len(table) - n) / len(table) if len(table) else 0.0, "distinct": len(counts)}
    if top is not None and len(counts) > top:
        shown = dict(list(counts.items())[:top])
        shown["other"] = sum(list(counts.values())[top:])
        counts = shown
    out["counts"] = counts
    return out


def _duplicates(card, table: pd.DataFrame) -> dict:
    column = card.duplicate_column if card.duplicate_column in table.columns else None
    declared = int(_present(table[column], card.missing_values).sum()) if column else 0
    excluded = card.excluded
    return {
        "column": column, "declared": declared if column else None,
        "excluded": excluded, "excluded_total": int(sum(excluded.values())),
        "exclusion_list": str(card.exclude_csv) if card.exclude is not None else None,
        "note": "near-duplicates (re-encoded, resized, cropped copies) are found by `dermkit data check` "
                "(perceptual hashes) and `dermkit data audit` (embeddings); this sheet decodes no image",
    }


def datasheet(card) -> dict:
    """The datasheet of ``card`` (a :class:`~dermkit.data.DatasetCard` or anything ``load_card`` takes) as a
    JSON-ready dict: identity, classes, partition, label_source, skin_type, demographics (age, sex,
    body_site), duplicates, clear_derm. Every number is computed from the card's metadata.csv."""
    from dermkit.data.card import load_card

    card = load_card(card)
    table = card.table
    sheet = {
        "identity": _identity(card, table),
        "classes": _classes(card, table),
        "partition": _partition(card, table),
        "label_source": _label_source(card, table),
        "skin_type": _skin_type(card, table),
        "demographics": {
            "age": _age(card, table),
            "sex": _categorical(card, table, SEX_COLUMNS),
            "body_site": _categorical(card, table, SITE_COLUMNS, top=TOP_SITES),
        },
        "duplicates": _duplicates(card, table),
        "clear_derm": [{"item": item, "section": section} for item, section in CLEAR_DERM_ITEMS],
    }
    return json_ready(sheet)


# --------------------------------------------------------------------------- rendering
def _pct(share) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if not value.is_integer() else str(int(value))
    return str(value)


def _count_table(counts: dict, total: int | None = None) -> tuple[list, list]:
    total = sum(counts.values()) if total is None else total
    rows = [[k, str(v), _pct(v / total if total else 0.0)] for k, v in counts.items()]
    return ["value", "images", "share"], rows


def _blocks(sheet: dict) -> list[tuple]:
    """The sheet as ("h1"|"h2"|"p"|"list", text...) and ("table", headers, rows) blocks for both renderers."""
    ident, classes, part = sheet["identity"], sheet["classes"], sheet["partition"]
    b: list[tuple] = [("h1", f"Datasheet: {ident['name']}"), ("p", ident["description"])]
    b.append(("h2", "Identity"))
    items = [f"Image type: {ident['image_type']}", f"Licence: {ident['licence']}", f"Source: {ident['source']}",
             f"Citation: {ident['citation']}", f"Images (rows of metadata.csv): {ident['rows']}"]
    if ident.get("second_view_column"):
        items.append(f"Second view `{ident['second_view_column']}`: {ident['second_view_images']} images")
    if ident["splits"]:
        items.append("Per split: " + ", ".join(f"{s} {n}" for s, n in ident["splits"].items()))
    b.append(("list", items))

    b.append(("h2", "Classes per split"))
    splits = list(classes["per_split"])
    rows = [[c, classes["class_names"].get(c, c), *(str(classes["per_split"][s].get(c, 0)) for s in splits),
             str(classes["total"].get(c, 0))] for c in classes["classes"]]
    rows.append(["total", "", *(str(sum(classes["per_split"][s].values())) for s in splits),
                 str(sum(classes["total"].values()))])
    b.append(("table", ["class", "name", *splits, "total"], rows))
    if classes["missing"]:
        b.append(("p", f"{classes['missing']} rows have no diagnosis."))

    b.append(("h2", "Partition"))
    items = [f"Partition level: {part['level']}" + (f" (column `{part['group_column']}`)" if part["group_column"]
                                                     else " (no group column: each image is its own group)"),
             f"Groups: {part['groups']}; images per group: mean {part['images_per_group_mean']:.2f}, "
             f"max {part['images_per_group_max']}",
             f"Groups spanning more than one split: {part['groups_across_splits']}"]
    if part.get("rows_without_group"):
        items.append(f"Rows without a group id: {part['rows_without_group']}")
    b.append(("list", items))

    ls = sheet["label_source"]
    b.append(("h2", "Label source (how the diagnosis was made)"))
    if not ls["recorded"]:
        b.append(("p", f"{NOT_RECORDED} in the card's metadata."))
    else:
        per = ls["per_split"]
        rows = [[k, str(v), _pct(ls["shares"][k]), *(str(per[s].get(k, 0)) for s in per)]
                for k, v in ls["counts"].items()]
        b.append(("p", f"Column `{ls['column']}`; missing {ls['missing']} ({_pct(ls['missing_share'])})."))
        b.append(("table", ["label source", "images", "share", *per], rows))

    fz, monk = sheet["skin_type"]["fitzpatrick"], sheet["skin_type"]["monk"]
    b.append(("h2", "Skin type"))
    if not fz["recorded"]:
        b.append(("p", f"Fitzpatrick skin type: {NOT_RECORDED}."))
    else:
        b.append(("p", f"Fitzpatrick skin type (column `{fz['column']}`): recorded for {fz['n']} images, missing "
                       f"{fz['missing']} ({_pct(fz['missing_share'])})"
                       + (f", unreadable {fz['unreadable']}" if fz["unreadable"] else "") + "."))
        total = fz["n"] + fz["missing"] + fz["unreadable"]
        rows = [[k, str(v), _pct(fz["shares"][k]), _pct(v / total if total else 0.0)] for k, v in fz["counts"].items()]
        rows.append(["missing", str(fz["missing"]), "", _pct(fz["missing_share"])])
        b.append(("table", ["Fitzpatrick", "images", "share of recorded", "share of all"], rows))
    if not monk["recorded"]:
        b.append(("p", f"Monk skin tone: {NOT_RECORDED}."))
    else:
        b.append(("p", f"Monk skin tone (column `{monk['column']}`): missing {monk['missing']} "
                       f"({_pct(monk['missing_share'])})."))
        b.append(("table", *_count_table(monk["counts"])))
    other = sheet["skin_type"].get("other") or {}
    if other.get("recorded"):
        b.append(("p", f"The release's own skin-tone label (column `{other['column']}`, its own scale, not a "
                       f"Fitzpatrick type): missing {other['missing']} ({_pct(other['missing_share'])})."))
        b.append(("table", *_count_table(other["counts"])))

    demo = sheet["demographics"]
    b.append(("h2", "Demographics"))
    age = demo["age"]
    if not age["recorded"]:
        b.append(("p", f"Age: {NOT_RECORDED}."))
    else:
        b.append(("p", f"Age (column `{age['column']}`): n {age['n']}, missing {age['missing']} "
                       f"({_pct(age['missing_share'])}), median {_num(age['median'])}, IQR {_num(age['q1'])}-"
                       f"{_num(age['q3'])}, range {_num(age['min'])}-{_num(age['max'])}."))
        b.append(("table", ["age band", "images", "share"],
                  [[k, str(v), _pct(v / age["n"] if age["n"] else 0.0)] for k, v in age["bands"].items()]))
    for key, title in (("sex", "Sex"), ("body_site", "Body site")):
        d = demo[key]
        if not d["recorded"]:
            b.append(("p", f"{title}: {NOT_RECORDED}."))
            continue
        b.append(("p", f"{title} (column `{d['column']}`): n {d['n']}, missing {d['missing']} "
                       f"({_pct(d['missing_share'])})" + (f", {d['distinct']} distinct values, top {TOP_SITES} shown"
                                                          if key == "body_site" and d["distinct"] > TOP_SITES else "")
                  + "."))
        b.append(("table", *_count_table(d["counts"], d["n"])))

    dup = sheet["duplicates"]
    b.append(("h2", "Duplicates and exclusions"))
    items = [f"Rows declared duplicates in `{dup['column']}`: {dup['declared']}" if dup["column"]
             else "Duplicate column: not in the card"]
    if dup["excluded_total"]:
        items.append(f"Exclusion list {dup['exclusion_list']}: {dup['excluded_total']} rows ("
                     + ", ".join(f"{n} {k}" for k, n in dup["excluded"].items()) + ")")
    else:
        items.append("Exclusion list: none")
    items.append(dup["note"][0].upper() + dup["note"][1:])
    b.append(("list", items))

    b.append(("h2", "CLEAR Derm items covered"))
    b.append(("p", "Data items of the CLEAR Derm checklist (Daneshjou et al., JAMA Dermatology 2022) that the card "
                   "answers (item names paraphrased):"))
    b.append(("table", ["checklist item", "section"], [[c["item"], c["section"]] for c in sheet["clear_derm"]]))
    return b


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def datasheet_markdown(sheet: dict) -> str:
    """The sheet as Markdown (headings, bullet lists, pipe tables)."""
    out = []
    for block in _blocks(sheet):
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]) + "\n")
        else:
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                     "|" + "|".join("---" for _ in headers) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.2em .6em}"
        "td{text-align:right}td:first-child,th{text-align:left}th{background:#f4f4f4}code{background:#f4f4f4}")


def _html_text(text) -> str:
    """Escaped text with `code` spans."""
    parts = html.escape(str(text)).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def datasheet_html(sheet: dict) -> str:
    """The sheet as one self-contained HTML page (inline CSS, every text escaped)."""
    title = html.escape(f"Datasheet: {sheet['identity']['name']}")
    body = []
    for block in _blocks(sheet):
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{_html_text(block[1])}</{kind}>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in block[1]) + "</ul>")
        else:
            head = "".join(f"<th>{_html_text(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_html_text(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def save_datasheet(card, out_dir: str | os.PathLike, sheet: dict | None = None) -> dict[str, Path]:
    """Write datasheet.md, datasheet.html and datasheet.json (each atomically) into ``out_dir``;
    returns their paths by format ("markdown", "html", "json"). ``sheet``: the card's
    :func:`datasheet` when already computed."""
    sheet = datasheet(card) if sheet is None else sheet
    out = Path(out_dir)
    return {
        "markdown": write_text(out / "datasheet.md", datasheet_markdown(sheet)),
        "html": write_text(out / "datasheet.html", datasheet_html(sheet)),
        "json": write_json(out / "datasheet.json", sheet),
    }
