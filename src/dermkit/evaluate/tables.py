"""Metrics as text: the one place where numbers, confidence intervals and tables are formatted.

Every report, table and console line of the evaluation layer prints through these functions, so
an undefined metric (None/NaN/inf: null in metrics.json) always reads ``n/a`` and never ``nan`` or
``np.float64(...)``:

* :func:`format_metric` a value (``0.8123``), :func:`format_ci` an interval (``0.7340 – 0.8910``),
  :func:`with_ci` a value with its interval (``0.812 (0.734–0.891)``), :func:`percent_ci` the same
  in percent (``81.2 [73.4, 89.1]``, the suite tables), :func:`format_p` a p-value;
* :func:`markdown_table` / :func:`markdown_cell` and :func:`html_table` lay the cells out.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import numpy as np

from .metrics import is_undefined

__all__ = ["format_ci", "format_metric", "format_p", "html_table", "markdown_cell", "markdown_table", "number",
           "percent_ci", "with_ci"]


def format_metric(value: Any, digits: int = 4) -> str:
    """A metric value for people: ``"n/a"`` when undefined (None/NaN/inf), else fixed digits.

    Use it wherever a metric is printed (CLI, tables): an undefined metric is ``null`` in
    metrics.json and must not print as ``nan``.
    """
    if is_undefined(value):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def number(value: Any, digits: int = 3) -> str:
    """:func:`format_metric` with the 3 digits of the Markdown tables by default (``0.123``)."""
    return format_metric(value, digits)


def format_ci(ci: Mapping | None, digits: int = 4, template: str = "{low} \u2013 {high}") -> str:
    """A confidence interval ``{"low", "high"}`` as text, ``"n/a"`` when it is undefined."""
    if not ci or is_undefined(ci.get("low")) or is_undefined(ci.get("high")):
        return "n/a"
    return template.format(low=format_metric(ci["low"], digits),
                           high=format_metric(ci["high"], digits))


def with_ci(value: Any, low: Any, high: Any, digits: int = 3, template: str = "{low}\u2013{high}") -> str:
    """``0.812 (0.734–0.891)``: a value and its CI (``template`` as in :func:`format_ci`); the
    bare value (``n/a`` when undefined) when the value or the CI is undefined."""
    interval = format_ci({"low": low, "high": high}, digits, template)
    if is_undefined(value) or interval == "n/a":
        return format_metric(value, digits)
    return f"{format_metric(value, digits)} ({interval})"


def percent_ci(value: Any, ci: Mapping | None) -> str:
    """``81.2 [73.4, 89.1]`` in percent (the suite tables); ``n/a`` when undefined."""
    if is_undefined(value):
        return "n/a"
    ci = ci or {}
    if is_undefined(ci.get("low")) or is_undefined(ci.get("high")):
        return f"{100 * float(value):.1f}"
    return f"{100 * float(value):.1f} [{100 * float(ci['low']):.1f}, {100 * float(ci['high']):.1f}]"


def format_p(value: Any) -> str:
    """A p-value: ``<0.0001`` below 1e-4, else 4 decimals; ``n/a`` when undefined."""
    if is_undefined(value):
        return "n/a"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def markdown_cell(value: Any) -> str:
    """Text for one Markdown table cell (or blockquote line): ``|`` escaped, newlines as spaces."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table ("|" in cells escaped), ending in a newline."""
    lines = ["| " + " | ".join(markdown_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(header: Sequence[str], rows: Sequence[Sequence], first_is_label: bool = True) -> str:
    """An HTML table (text escaped); the first cell of a row is its header cell when ``first_is_label``."""
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f"<th scope='row'>{esc(str(v))}</th>" if j == 0 and first_is_label
            else f"<td>{esc(str(v))}</td>"
            for j, v in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
