"""Plain-text tables of metrics: Markdown, value [low, high] cells, numbers that print cleanly."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["markdown_table", "number", "with_ci", "percent_ci"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table ("|" in cells escaped)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def number(value, digits: int = 3) -> str:
    """``0.123`` style, ``n/a`` for None/NaN (never ``np.float64(...)``)."""
    return "n/a" if _missing(value) else f"{float(value):.{digits}f}"


def with_ci(value, low, high, digits: int = 3) -> str:
    """``0.812 (0.734–0.891)``; the bare value when the CI is undefined."""
    if _missing(value) or _missing(low) or _missing(high):
        return number(value, digits)
    return f"{number(value, digits)} ({number(low, digits)}–{number(high, digits)})"


def percent_ci(value, ci: dict | None) -> str:
    """``81.2 [73.4, 89.1]`` in percent (the suite tables); ``n/a`` when undefined."""
    if _missing(value):
        return "n/a"
    ci = ci or {}
    if _missing(ci.get("low")) or _missing(ci.get("high")):
        return f"{100 * float(value):.1f}"
    return f"{100 * float(value):.1f} [{100 * float(ci['low']):.1f}, {100 * float(ci['high']):.1f}]"
