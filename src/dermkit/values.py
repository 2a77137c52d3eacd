"""What a table cell means before any layer reads it: missing-value tokens and spelling keys.

The ground floor shared by ``data/`` (dataset cards, metadata, captions) and ``evaluate/``
(predictions tables): one set of texts read as "no value", one key under which two spellings of a
name differ only by letter case or spacing. Nothing here imports another dermkit module.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["MISSING_TOKENS", "UNKNOWN_WORDS", "is_missing", "is_unknown", "missing_mask", "spelling_key",
           "spelling_difference"]

#: Cell texts read as a missing value wherever dermkit reads a table: pandas' default NA strings
#: plus a few common placeholders. Matched after stripping surrounding whitespace and ignoring
#: letter case, so "NA", "na", "NULL", "None" and "n/a" are all missing. A class, a split or a
#: lesion id may not be spelled like one of them.
MISSING_TOKENS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "none", "-", "--", "?",
})
#: Words a *metadata* field uses for "not recorded" (HAM10000's sex "unknown", PAD-UFES-20's
#: "UNK"). Only metadata reads them as missing: "unknown" is a real diagnosis in some releases.
UNKNOWN_WORDS = frozenset({"unknown", "unk", "not available", "unspecified"})

_MISSING_FOLDED = frozenset(token.casefold() for token in MISSING_TOKENS)
_UNKNOWN_FOLDED = _MISSING_FOLDED | UNKNOWN_WORDS


def _is_na(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:  # pandas' NA / NaT and numpy floats, without importing pandas here
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def is_missing(value: Any, extra: Iterable[str] = ()) -> bool:
    """True for ``None``, NaN/NA and any text in :data:`MISSING_TOKENS` or ``extra`` (a card's own
    ``missing_values``), compared after stripping spaces and ignoring case."""
    if _is_na(value):
        return True
    text = str(value).strip().casefold()
    return text in _MISSING_FOLDED or (bool(extra) and text in {str(e).strip().casefold() for e in extra})


def is_unknown(value: Any, extra: Iterable[str] = ()) -> bool:
    """:func:`is_missing` for a metadata field: also true for the :data:`UNKNOWN_WORDS`."""
    if _is_na(value):
        return True
    text = str(value).strip().casefold()
    return text in _UNKNOWN_FOLDED or (bool(extra) and text in {str(e).strip().casefold() for e in extra})


def missing_mask(values: Iterable[Any], extra: Iterable[str] = ()) -> list[bool]:
    """:func:`is_missing` of every value, in order."""
    extra = tuple(extra)
    return [is_missing(v, extra) for v in values]


def spelling_key(value: Any) -> str:
    """``value`` without case and with runs of spaces collapsed: spellings of one name that
    differ only by case or spacing ("Melanoma", "melanoma", "melanoma  ") share a key."""
    return " ".join(str(value).split()).casefold()


def spelling_difference(*names: Any) -> str:
    """"case" when ``names`` differ only by case, else "case or spacing"."""
    return "case" if len({str(n).casefold() for n in names}) == 1 else "case or spacing"
