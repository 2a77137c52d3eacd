"""Skin type as one column, whatever a release calls it.

Releases record the Fitzpatrick type under their own names and codes (PAD-UFES-20: ``fitspatrick``,
1.0-6.0; others ``fitzpatrick_scale``, ``skin_type``, roman numerals). :func:`with_skin_type` gives
an analysis table one ``fitzpatrick`` column (I-VI, missing kept missing), so ``dermkit evaluate
--subgroups fitzpatrick`` and the datasheet read every card the same way. The type comes from the
data's own labels only: a colour-based estimate is not a skin type (issue 27).
"""

from __future__ import annotations

import pandas as pd

from dermkit.values import is_unknown

__all__ = ["FITZPATRICK_TYPES", "FITZPATRICK_COLUMNS", "MONK_COLUMNS", "find_column", "fitzpatrick_type",
           "with_skin_type"]

FITZPATRICK_TYPES = ("I", "II", "III", "IV", "V", "VI")
FITZPATRICK_COLUMNS = ("fitzpatrick", "fitspatrick", "fitzpatrick_scale", "fitzpatrick_type", "skin_type")
MONK_COLUMNS = ("monk", "monk_skin_tone", "monk_scale", "mst")


def find_column(table: pd.DataFrame, names) -> str | None:
    """First column of ``table`` named like one of ``names`` (case-insensitive), or None."""
    folded = {str(c).strip().casefold(): c for c in table.columns}
    return next((folded[n] for n in names if n in folded), None)


def fitzpatrick_type(value) -> str | None:
    """Fitzpatrick type I-VI of a cell (1-6, "1.0", "I"-"VI", "type II"), None when missing or unreadable."""
    if is_unknown(value):
        return None
    text = str(value).strip().upper()
    for prefix in ("FITZPATRICK", "TYPE", "FST"):
        text = text.removeprefix(prefix).strip(" -_:")
    if text in FITZPATRICK_TYPES:
        return text
    try:
        number = float(text)
    except ValueError:
        return None
    if number.is_integer() and 1 <= number <= 6:
        return FITZPATRICK_TYPES[int(number) - 1]
    return None


def with_skin_type(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``fitzpatrick`` column (I-VI; None where missing or unreadable) derived from
    its Fitzpatrick column under any of :data:`FITZPATRICK_COLUMNS`; unchanged when it has none. An
    existing ``fitzpatrick`` column is normalised the same way (1.0 -> I)."""
    source = find_column(table, FITZPATRICK_COLUMNS)
    if source is None:
        return table
    out = table.copy()
    out["fitzpatrick"] = table[source].map(fitzpatrick_type).astype(object)
    return out
