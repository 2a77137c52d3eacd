"""Skin type as one column, whatever a release calls it.

Releases record the Fitzpatrick type under their own names and codes (PAD-UFES-20: ``fitspatrick``,
1.0-6.0; Fitzpatrick17k ``fitzpatrick_scale``; DDI only the groups I-II / III-IV / V-VI as 12/34/56;
others ``skin_type``, roman numerals). The importers write one ``fitzpatrick`` column (I-VI, or the
grouped values as the release gives them) and :func:`with_skin_type` gives any card's analysis table
that column (missing kept missing), so ``dermkit evaluate --subgroups fitzpatrick`` and the datasheet
read every card the same way; likewise ``monk_skin_tone`` (1-10). The type comes from the data's own
labels only: a colour-based estimate is not a skin type (issue 27).
"""

from __future__ import annotations

import pandas as pd

from dermkit.values import is_unknown

__all__ = ["FITZPATRICK_TYPES", "FITZPATRICK_GROUPS", "FITZPATRICK_ORDER", "FITZPATRICK_COLUMNS", "MONK_COLUMNS",
           "find_column", "fitzpatrick_type", "monk_tone", "with_skin_type"]

FITZPATRICK_TYPES = ("I", "II", "III", "IV", "V", "VI")
#: The groups releases that do not record single types use (DDI), in their codes too ("12", "34", "56").
FITZPATRICK_GROUPS = ("I-II", "III-IV", "V-VI")
#: Display order: the types, then the groups.
FITZPATRICK_ORDER = FITZPATRICK_TYPES + FITZPATRICK_GROUPS
_GROUP_CODES = {"12": "I-II", "34": "III-IV", "56": "V-VI"}
FITZPATRICK_COLUMNS = ("fitzpatrick", "fitspatrick", "fitzpatrick_scale", "fitzpatrick_type", "skin_type")
MONK_COLUMNS = ("monk_skin_tone", "monk", "monk_scale", "mst")


def find_column(table: pd.DataFrame, names) -> str | None:
    """First column of ``table`` named like one of ``names`` (case-insensitive), or None."""
    folded = {str(c).strip().casefold(): c for c in table.columns}
    return next((folded[n] for n in names if n in folded), None)


def _without_prefix(text: str, prefixes) -> str:
    """``text`` without the words naming the scale ("TYPE III" -> "III"); "-1" stays "-1"."""
    for prefix in prefixes:
        if text.startswith(prefix):
            text = text[len(prefix):].strip(" -_:")
    return text


def fitzpatrick_type(value) -> str | None:
    """Fitzpatrick type I-VI of a cell (1-6, "1.0", "I"-"VI", "type II", "FST3"), or its group I-II /
    III-IV / V-VI ("I-II", "1-2", DDI's 12/34/56); None when missing or unreadable."""
    if is_unknown(value):
        return None
    text = _without_prefix(str(value).strip().upper(), ("FITZPATRICK", "TYPE", "FST"))
    if text in FITZPATRICK_TYPES:
        return text
    group = text.replace(" ", "").replace("/", "-").replace("\u2013", "-")
    if group.endswith(".0"):
        group = group[:-2]
    if group in _GROUP_CODES:
        return _GROUP_CODES[group]
    if "-" in group:
        low, _, high = group.partition("-")
        low, high = fitzpatrick_type(low), fitzpatrick_type(high)
        if low and high and f"{low}-{high}" in FITZPATRICK_GROUPS:
            return f"{low}-{high}"
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if number.is_integer() and 1 <= number <= 6:
        return FITZPATRICK_TYPES[int(number) - 1]
    return None


def monk_tone(value) -> int | None:
    """Monk skin tone 1-10 of a cell (7, "7.0", "MST 7"), None when missing or unreadable."""
    if is_unknown(value):
        return None
    text = _without_prefix(str(value).strip().upper(), ("MONK", "MST"))
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() and 1 <= number <= 10 else None


def with_skin_type(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``fitzpatrick`` column (I-VI or a group I-II / III-IV / V-VI; None where missing
    or unreadable) derived from its Fitzpatrick column under any of :data:`FITZPATRICK_COLUMNS`, and a
    ``monk_skin_tone`` column (1-10) from any of :data:`MONK_COLUMNS`; unchanged when it has neither.
    Existing columns of those names are normalised the same way (1.0 -> I, "7.0" -> 7)."""
    fitz, monk = find_column(table, FITZPATRICK_COLUMNS), find_column(table, MONK_COLUMNS)
    if fitz is None and monk is None:
        return table
    out = table.copy()
    if fitz is not None:
        out["fitzpatrick"] = table[fitz].map(fitzpatrick_type).astype(object)
    if monk is not None:
        tones = [monk_tone(v) for v in table[monk]]
        out["monk_skin_tone"] = pd.Series([None if t is None else str(t) for t in tones], index=table.index,
                                          dtype=object)
    return out
