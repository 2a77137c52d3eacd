"""Robustness stress test, the numbers: one model's metrics on a clean split and on transformed copies.

Numbers in, numbers out: the caller predicts the clean split and every condition (a transform at a
severity, ``dermkit.data.stress``) on the same images in the same order, and hands over the
probabilities. :func:`stress_table` gives one row per condition plus the clean row:

``transform, family, severity, n, balanced_accuracy, macro_auc, accuracy, flip_rate`` and, for each
of the three metrics, ``<metric>_diff`` (condition - clean), ``<metric>_ci_low``,
``<metric>_ci_high`` and ``<metric>_p``: a **paired bootstrap**
(:func:`dermkit.evaluate.compare.paired_bootstrap`): clean and transformed predictions are scored
on the same resamples (stratified by class, whole lesions/patients drawn together when ``groups``
is given), so what they share (which images are hard anyway) cancels in the difference. The p-value
is two-sided and not adjusted for the number of conditions.

``flip_rate`` is the share of images whose predicted class (argmax of the probabilities) differs
from the clean prediction, right or wrong: a model can keep its accuracy while changing its mind on
many images. Metrics use the argmax decision, as the flip rate does.

:func:`stress_summary` condenses the table (mean relative drop of balanced accuracy and macro AUC,
the worst transforms), :func:`stress_figure` plots each metric against severity per family,
:func:`stress_markdown` writes the report section, :func:`stress_json` the metrics.json part and
:func:`save_stress` all of them into a folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import io
from ..errors import DermkitError
from .compare import paired_bootstrap
from .metrics import check_arrays, classification_metrics, quiet
from .tables import format_metric, format_p, markdown_table

__all__ = [
    "STRESS_COLUMNS",
    "STRESS_METRICS",
    "save_stress",
    "stress_figure",
    "stress_json",
    "stress_markdown",
    "stress_summary",
    "stress_table",
]

#: Metrics of the stress table, each with a paired difference to clean.
STRESS_METRICS = ("balanced_accuracy", "macro_auc", "accuracy")
_LABELS = {"balanced_accuracy": "Balanced accuracy", "macro_auc": "Macro AUC", "accuracy": "Accuracy",
           "flip_rate": "Flip rate (share of predictions changed)"}
_SHORT = {"balanced_accuracy": "BACC", "macro_auc": "AUC", "accuracy": "Acc"}
#: Columns of stress.csv, in order.
STRESS_COLUMNS = (["transform", "family", "severity", "n", *STRESS_METRICS, "flip_rate"]
                  + [f"{m}_{part}" for m in STRESS_METRICS for part in ("diff", "ci_low", "ci_high", "p")])


def stress_table(y_true, clean_proba, conditions: Mapping[tuple[str, int], object],
                 families: Mapping[str, str] | None = None, classes: Sequence[str] | None = None, groups=None,
                 n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row for the clean split (transform ``"clean"``, family ``"clean"``, severity 0) and one per
    condition ``(transform, severity) -> proba`` (N, C), in the order given; see the module docstring.

    ``families`` maps a transform to its family (``dermkit.data.stress.transform_families()``;
    transforms it lacks get ``"other"``); ``classes`` names the columns (default ``0..C-1``);
    ``groups`` (one lesion/patient id per image) makes the bootstrap draw whole groups.
    ``n_bootstrap`` = 0 leaves the CIs and p-values empty (NaN).
    """
    clean_proba = np.asarray(clean_proba, dtype=float)
    if clean_proba.ndim != 2:
        raise DermkitError(f"clean probabilities must be an (N, C) array, got shape {clean_proba.shape}")
    classes = [str(c) for c in (classes if classes is not None else range(clean_proba.shape[1]))]
    y_true, clean_proba, clean_pred = check_arrays(y_true, clean_proba, classes)
    valid_n = isinstance(n_bootstrap, (int, np.integer)) and not isinstance(n_bootstrap, bool)
    if not valid_n or n_bootstrap < 0:
        raise DermkitError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    if groups is not None and len(groups) != len(y_true):
        raise DermkitError(f"groups has {len(groups)} values for {len(y_true)} images")
    families = dict(families or {})
    with quiet():
        clean = classification_metrics(y_true, clean_proba, classes, clean_pred)
    rows = [{"transform": "clean", "family": "clean", "severity": 0, "n": int(len(y_true)),
             **{m: float(clean[m]) for m in STRESS_METRICS}, "flip_rate": 0.0,
             **{f"{m}_{part}": value for m in STRESS_METRICS
                for part, value in (("diff", 0.0), ("ci_low", np.nan), ("ci_high", np.nan), ("p", np.nan))}}]
    for key, proba in conditions.items():
        name, severity = _condition_key(key)
        proba = np.asarray(proba, dtype=float)
        if proba.shape != clean_proba.shape:
            raise DermkitError(f"condition {name}:{severity} has probabilities of shape {proba.shape}, the clean "
                               f"split {clean_proba.shape}: predict the same images in the same order")
        _, proba, pred = check_arrays(y_true, proba, classes)
        paired = paired_bootstrap(y_true, clean_proba, proba, clean_pred, pred, groups, n=int(n_bootstrap),
                                  seed=seed, level=level)
        row = {"transform": name, "family": families.get(name, "other"), "severity": severity,
               "n": int(len(y_true))}
        row.update({m: paired[m]["b"] for m in STRESS_METRICS})
        row["flip_rate"] = float(np.mean(pred != clean_pred))
        for m in STRESS_METRICS:
            r = paired[m]
            row.update({f"{m}_diff": r["difference"], f"{m}_ci_low": r["ci"]["low"], f"{m}_ci_high": r["ci"]["high"],
                        f"{m}_p": r["p"]})
        rows.append(row)
    return pd.DataFrame(rows, columns=STRESS_COLUMNS)


def _condition_key(key) -> tuple[str, int]:
    try:
        name, severity = key
        ok = isinstance(name, str) and float(severity) == int(severity)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DermkitError(f"stress conditions are keyed by (transform, severity), got {key!r}")
    return name, int(severity)


def _clean_row(table: pd.DataFrame) -> pd.Series:
    clean = table[table["transform"] == "clean"]
    if clean.empty:
        raise DermkitError("the stress table has no clean row (transform 'clean'); build it with stress_table")
    return clean.iloc[0]


def _relative_drop(clean: float, values: pd.Series) -> pd.Series:
    return (clean - values) / clean if clean and np.isfinite(clean) else pd.Series(np.nan, index=values.index)


def stress_summary(table: pd.DataFrame) -> dict:
    """JSON-able summary of a :func:`stress_table`.

    ``clean`` (the three metrics), ``n_conditions``; ``mean_relative_drop`` of balanced accuracy and
    macro AUC over all conditions ((clean - condition) / clean, averaged; positive = worse) and per
    family (``by_family``); ``transforms``: per transform, the mean BACC and AUC drop (clean - value,
    averaged over its severities) and mean flip rate, worst first; ``worst`` (the first of them, with
    the severity where its BACC drop is largest), ``worst3`` (their names) and ``worst_condition``
    (the single condition with the largest BACC drop); ``line``: one sentence for a suite table.
    """
    clean = _clean_row(table)
    cond = table[table["transform"] != "clean"].copy()
    out: dict = {"clean": {m: float(clean[m]) for m in STRESS_METRICS}, "n_conditions": int(len(cond)),
                 "n": int(clean["n"])}
    if cond.empty:
        out.update(mean_relative_drop={"balanced_accuracy": np.nan, "macro_auc": np.nan}, by_family={},
                   transforms=[], worst=None, worst3=[], worst_condition=None,
                   line="stress: no transformed condition evaluated")
        return out
    for m in ("balanced_accuracy", "macro_auc"):
        cond[f"{m}_rel"] = _relative_drop(float(clean[m]), cond[m])
        cond[f"{m}_drop"] = float(clean[m]) - cond[m]
    out["mean_relative_drop"] = {m: _mean(cond[f"{m}_rel"]) for m in ("balanced_accuracy", "macro_auc")}
    out["by_family"] = {family: {m: _mean(part[f"{m}_rel"]) for m in ("balanced_accuracy", "macro_auc")}
                        for family, part in cond.groupby("family", sort=False)}
    transforms = []
    for name, part in cond.groupby("transform", sort=False):
        drops = part["balanced_accuracy_drop"]
        at = part.loc[drops.idxmax()] if drops.notna().any() else part.iloc[-1]
        transforms.append({"transform": name, "family": str(part["family"].iloc[0]),
                           "severities": [int(s) for s in part["severity"]],
                           "balanced_accuracy_drop": _mean(drops), "macro_auc_drop": _mean(part["macro_auc_drop"]),
                           "flip_rate": _mean(part["flip_rate"]), "worst_severity": int(at["severity"]),
                           "balanced_accuracy_drop_at_worst": float(at["balanced_accuracy_drop"]),
                           "flip_rate_at_worst": float(at["flip_rate"])})
    transforms.sort(key=lambda t: -t["balanced_accuracy_drop"] if np.isfinite(t["balanced_accuracy_drop"]) else np.inf)
    out["transforms"] = transforms
    out["worst"] = transforms[0]
    out["worst3"] = [t["transform"] for t in transforms[:3]]
    drops = cond["balanced_accuracy_drop"]
    at = cond.loc[drops.idxmax()] if drops.notna().any() else cond.iloc[0]
    out["worst_condition"] = {"transform": str(at["transform"]), "severity": int(at["severity"]),
                              "balanced_accuracy_drop": float(at["balanced_accuracy_drop"]),
                              "flip_rate": float(at["flip_rate"])}
    worst, rel = out["worst"], out["mean_relative_drop"]
    out["line"] = (f"stress ({out['n_conditions']} conditions): mean relative drop BACC "
                   f"{_percent(rel['balanced_accuracy'])}, AUC {_percent(rel['macro_auc'])}; "
                   f"worst {worst['transform']} (BACC "
                   f"-{format_metric(worst['balanced_accuracy_drop'], 3)} on average, "
                   f"{_percent(worst['flip_rate'])} of predictions flipped)")
    return out


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _percent(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def stress_json(table: pd.DataFrame, summary: dict | None = None) -> dict:
    """The ``stress`` entry of metrics.json: ``summary`` and ``conditions`` (the table's rows), NaN as null."""
    summary = stress_summary(table) if summary is None else summary
    return io.json_ready({"summary": summary, "conditions": table.to_dict(orient="records")})


def stress_figure(table: pd.DataFrame, metrics: Sequence[str] = ("balanced_accuracy", "macro_auc"),
                  title: str | None = None):
    """One column of panels per family, one row per metric: the metric against severity, a line per
    transform starting at the clean value (severity 0), the clean value as a dashed line."""
    from matplotlib.figure import Figure  # the object-oriented API, as plots.py: no window, no pyplot state

    clean = _clean_row(table)
    cond = table[table["transform"] != "clean"]
    families = list(dict.fromkeys(cond["family"])) or ["(none)"]
    fig = Figure(figsize=(4.6 * len(families) + 0.6, 3.4 * len(metrics) + 0.8))
    axes = fig.subplots(len(metrics), len(families), squeeze=False, sharex=True, sharey="row")
    for col, family in enumerate(families):
        part = cond[cond["family"] == family]
        names = list(dict.fromkeys(part["transform"]))
        colours = [f"C{i % 10}" for i in range(len(names))]
        styles = ["-", "--", ":", "-."]
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            base = 0.0 if metric == "flip_rate" else float(clean[metric])
            for i, name in enumerate(names):
                line = part[part["transform"] == name].sort_values("severity")
                ax.plot([0, *line["severity"]], [base, *line[metric]], marker="o", ms=3.5, lw=1.4,
                        color=colours[i], ls=styles[(i // 10) % len(styles)], label=name)
            if metric != "flip_rate":
                ax.axhline(base, ls="--", color="#555555", lw=1, label="clean")
            ax.set_xticks(range(0, 6))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(family)
            if row == len(metrics) - 1:
                ax.set_xlabel("Severity (0 = clean)")
            if col == 0:
                ax.set_ylabel(_LABELS.get(metric, metric))
        axes[0][col].legend(loc="best", fontsize="x-small", ncol=2 if len(names) > 6 else 1)
    fig.suptitle(title or "Robustness stress test: metric against severity")
    fig.tight_layout()
    return fig


def _delta(row: pd.Series, metric: str) -> str:
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    ci = "" if not (np.isfinite(low) and np.isfinite(high)) else f" [{format_metric(low, 3)}, {format_metric(high, 3)}]"
    return f"{row[f'{metric}_diff']:+.3f}{ci}" if np.isfinite(row[f"{metric}_diff"]) else "n/a"


def stress_markdown(table: pd.DataFrame, summary: dict | None = None, heading: str = "## Robustness stress test",
                    level: float = 0.95) -> str:
    """The report.md section: what was done, the summary and the table of conditions."""
    summary = stress_summary(table) if summary is None else summary
    clean = summary["clean"]
    lines = [heading, "",
             f"The clean split and {summary['n_conditions']} transformed copies of it (a transform at a severity "
             "1-5, computed on the fly, seeded per image so every model sees the same copies), "
             f"{summary['n']} images each. Differences are condition - clean with {level:.0%} CIs and two-sided "
             "p-values from a paired bootstrap (the same resamples for both; p not adjusted for the number of "
             "conditions). Flip rate: share of images whose predicted class changes.", ""]
    if summary["worst"] is not None:
        rel, worst, wc = summary["mean_relative_drop"], summary["worst"], summary["worst_condition"]
        lines += [f"- Clean: balanced accuracy {format_metric(clean['balanced_accuracy'], 3)}, macro AUC "
                  f"{format_metric(clean['macro_auc'], 3)}, accuracy {format_metric(clean['accuracy'], 3)}",
                  f"- Mean relative drop over the conditions: balanced accuracy {_percent(rel['balanced_accuracy'])}, "
                  f"macro AUC {_percent(rel['macro_auc'])}"]
        for family, drops in summary["by_family"].items():
            lines.append(f"  - {family}: balanced accuracy {_percent(drops['balanced_accuracy'])}, "
                         f"macro AUC {_percent(drops['macro_auc'])}")
        lines += [f"- Worst transform: {worst['transform']} ({worst['family']}): balanced accuracy "
                  f"-{format_metric(worst['balanced_accuracy_drop'], 3)} on average over its severities, "
                  f"{_percent(worst['flip_rate'])} of predictions flipped",
                  f"- Worst condition: {wc['transform']} at severity {wc['severity']}: balanced accuracy "
                  f"-{format_metric(wc['balanced_accuracy_drop'], 3)}, {_percent(wc['flip_rate'])} flipped",
                  f"- Three worst transforms: {', '.join(summary['worst3'])}", ""]
    lines.append(markdown_table(list(STRESS_HEADER), stress_rows(table)))
    return "\n".join(lines)


#: The header of :func:`stress_rows` (report.md and report.html).
STRESS_HEADER = ("Transform", "Family", "Severity", "BACC", "ΔBACC [CI]", "p", "AUC", "ΔAUC [CI]", "p",
                 "Acc", "ΔAcc [CI]", "p", "Flipped")


def stress_rows(table: pd.DataFrame) -> list[list]:
    """The cells of the conditions table, one row per condition (clean first)."""
    rows = []
    for _, row in table.iterrows():
        cells = [row["transform"], row["family"], int(row["severity"])]
        for m in STRESS_METRICS:
            is_clean = row["transform"] == "clean"
            cells += [format_metric(row[m], 3), "" if is_clean else _delta(row, m),
                      "" if is_clean else format_p(row[f"{m}_p"])]
        cells.append(_percent(row["flip_rate"]))
        rows.append(cells)
    return rows


def save_stress(table: pd.DataFrame, out_dir: str | os.PathLike, summary: dict | None = None,
                title: str | None = None) -> dict[str, Path]:
    """Write stress.csv, stress.json, stress.md and stress.png into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    summary = stress_summary(table) if summary is None else summary
    text = stress_markdown(table, summary)
    fig = stress_figure(table, title=title)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": io.write_csv(out / "stress.csv", table),
             "json": io.write_json(out / "stress.json", stress_json(table, summary)),
             "markdown": io.write_text(out / "stress.md", text + "\n"),
             "figure": io.save_figure(out / "stress.png", fig)}
    return paths
