"""Prediction files in, evaluation report out.

``evaluate`` validates a predictions table (:func:`dermkit.evaluate.predictions.read_predictions`:
format, missing values, duplicates), computes point metrics and bootstrap confidence intervals,
the selective-prediction curve and, when asked, subgroup tables; ``Report.save`` writes
metrics.json, predictions.csv, report.md, a self-contained report.html and the PNG figures.

What the numbers must be read with (stripped whitespace, rows without a group, a prediction column
that contradicts the probabilities, classes absent from the targets) ends up in
``Report.warnings``: metrics.json ``"warnings"`` and the top of report.md/.html. Numbers are printed
through :mod:`dermkit.evaluate.tables`, so undefined metrics (null in metrics.json) read ``n/a``.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import io
from ..errors import DermkitError
from .bootstrap import bootstrap_metrics, group_codes
from .compare import cleaning_effect, cleaning_rows
from .metrics import HEADLINE_METRICS, class_coverage_warning, classification_metrics, prediction_column_warning
from .ood import score_histogram_figure
from .predictions import SOURCE_ATTR, WARNINGS_ATTR, normalise_groups, prediction_arrays, read_predictions
from .selective import risk_coverage, selective_with_ci
from .stress import STRESS_HEADER, stress_figure, stress_markdown, stress_rows
from .subgroups import (
    SUBGROUP_METRICS,
    attach_metadata,
    forest_figure,
    gap_table,
    subgroup_analysis,
    subgroup_labels,
    subgroup_table,
    subgroups_markdown,
)
from .tables import format_ci, format_metric, html_table, markdown_cell, markdown_table, with_ci

FIGURES = {
    "confusion_matrix.png": "Confusion matrix (counts)",
    "confusion_matrix_normalized.png": "Confusion matrix (row-normalised)",
    "roc.png": "ROC curves",
    "reliability.png": "Reliability diagram",
    "risk_coverage.png": "Risk-coverage curve (selective prediction)",
}
#: Written only when the report has subgroups.
SUBGROUP_FIGURE = ("subgroups_forest.png", "Subgroup forest plot (95% CIs; hollow = too few cases)")
#: Written only when the report has a stress test.
STRESS_FIGURE = ("stress.png", "Robustness stress test: each metric against severity, per transform family")
#: Written only when the report has out-of-distribution scores.
OOD_FIGURE = ("ood_scores.png", "Out-of-distribution scores of the test images and of each other set (dashed: "
              "the detector's threshold)")

_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_f1": "Macro F1",
    "weighted_f1": "Weighted F1",
    "macro_auc": "Macro AUC (one-vs-rest)",
    "cohen_kappa": "Cohen's kappa",
    "ece": "ECE (15 bins, lower is better)",
    "brier": "Brier score (lower is better)",
    "log_loss": "Log loss (lower is better)",
}
_PER_CLASS = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc")
#: Every report is of one trained model (``metrics["seeds"] == 1``): what its CIs do not cover.
SEED_NOTE = ("These intervals cover the sampling of test cases only: the predictions come from one training run "
             "(seeds: 1), so training noise (retraining with another seed gives another model) is not included; "
             "`dermkit run --seeds 0,1,2` measures it.")


def evaluate(
    preds: str | os.PathLike | pd.DataFrame,
    groups=None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    title: str = "Evaluation report",
    level: float = 0.95,
    allow_duplicates: bool = False,
    subgroups: Sequence[str] | None = None,
    bins: Mapping[str, Sequence[float]] | None = None,
    metadata: pd.DataFrame | None = None,
    missing_values: Sequence[str] = (),
    excluded: Sequence[bool] | None = None,
    excluded_note: str = "",
) -> Report:
    """Metrics with bootstrap CIs for a predictions table (path or DataFrame).

    ``groups`` (one lesion/patient id per row) switches to the cluster bootstrap; by default the
    table's ``group`` column is used when present. A missing group id (see
    :data:`dermkit.values.MISSING_TOKENS`) makes that row its own cluster. Label metrics
    (:data:`LABEL_METRICS`) use the ``prediction`` column, probability metrics
    (:data:`PROBABILITY_METRICS`: AUC, sensitivity at specificity, ECE, Brier, log loss) the
    ``prob:`` columns. ``allow_duplicates`` is passed to
    :func:`read_predictions` (repeated image ids are refused by default).

    ``Report.warnings`` collects what the numbers need read with: whitespace that was stripped,
    rows without a group, allowed duplicates, a ``prediction`` column that disagrees with the
    probabilities, and classes absent from the targets (undefined or fewer-class metrics).

    Every report has ``metrics["selective"]`` (risk-coverage AURC, accuracy and melanoma
    sensitivity at 80/90/95% coverage, with CIs; see :mod:`dermkit.evaluate.selective`).
    ``subgroups`` (metadata columns such as ``["sex", "age_band"]``; see
    :mod:`dermkit.evaluate.subgroups`, ``bins`` = cut points per numeric column) adds
    ``metrics["subgroups"]``; the columns come from the table itself or from ``metadata`` (a
    dataset's metadata table, joined on ``image``; ``missing_values`` = its extra missing tokens).

    ``excluded`` (one bool per row: the rows a dataset card's exclusion list leaves out) makes the
    report's metrics those of the **cleaned** rows and adds ``metrics["cleaning"]``: every headline
    metric on the full and on the cleaned rows side by side, with CIs and the paired difference
    (:func:`dermkit.evaluate.compare.cleaning_effect`); ``excluded_note`` says where the list came from.
    """
    frame = read_predictions(preds, allow_duplicates=allow_duplicates)
    warnings = list(frame.attrs.get(WARNINGS_ATTR, ()))
    if groups is not None:
        # The explicit ids replace the group column: its warnings no longer apply.
        warnings = [w for w in warnings if "no group id" not in w and "group id(s)" not in w]
        values = np.asarray(groups, dtype=object)
        if values.shape != (len(frame),):
            group_codes(values, len(frame))  # raises the length error
        images = frame["image"].to_numpy(dtype=object)
        ids, notes = normalise_groups(values, images, lambda i: f"row {i + 1} (image {str(images[i])!r})",
                                      "id(s) in groups=")
        warnings += notes
        frame["group"] = ids
    valid_n = isinstance(n_bootstrap, (int, np.integer)) and not isinstance(n_bootstrap, bool)
    if not valid_n or n_bootstrap < 0:
        raise DermkitError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap}")
    cleaning = None
    if excluded is not None:
        mask = np.asarray(excluded, dtype=bool)
        if mask.shape != (len(frame),):
            raise DermkitError(f"excluded has {mask.size} values for {len(frame)} prediction rows")
        if mask.any():
            classes, y_true, proba, y_pred = prediction_arrays(frame)
            full_groups = frame["group"].to_numpy() if "group" in frame.columns else None
            cleaning = cleaning_effect(y_true, proba, y_pred, mask, full_groups, n=int(n_bootstrap), seed=seed,
                                       level=level)
            cleaning["note"] = excluded_note
            warnings.append(f"{excluded_note or f'{int(mask.sum())} rows are excluded'}: the metrics are on the "
                            f"{cleaning['n_cleaned']} rows left (the cleaned split); 'Full vs cleaned split' "
                            f"compares them with all {len(frame)}")
            attrs = dict(frame.attrs)
            frame = frame[~mask].reset_index(drop=True)
            frame.attrs.update(attrs)
    grouped = "group" in frame.columns
    classes, y_true, proba, y_pred = prediction_arrays(frame)

    metrics = classification_metrics(y_true, proba, classes, y_pred)
    source_file = frame.attrs.get(SOURCE_ATTR)
    for note in (prediction_column_warning(frame["image"].to_numpy(), proba, y_pred),
                 class_coverage_warning(y_true, y_pred, classes, metrics)):
        if note:
            warnings.append(f"{source_file}: {note}" if source_file else note)
    group_values = frame["group"].to_numpy() if grouped else None
    if n_bootstrap > 0:
        ci = bootstrap_metrics(y_true, proba, y_pred, group_values, n=int(n_bootstrap),
                               seed=seed, level=level)
    else:
        names = list(HEADLINE_METRICS) + [
            f"sensitivity_at_specificity_{k}" for k in metrics.get("sensitivity_at_specificity", {})
        ]
        ci = {name: {"low": float("nan"), "high": float("nan"), "level": level} for name in names}
    metrics["ci"] = ci
    metrics["selective"] = selective_with_ci(y_true, proba, y_pred, classes, groups=group_values,
                                             n_bootstrap=int(n_bootstrap), seed=seed, level=level)
    if subgroups:
        table = attach_metadata(frame, metadata) if metadata is not None else frame
        labels, how = subgroup_labels(table, list(subgroups), bins, missing_values=missing_values)
        metrics["subgroups"] = subgroup_analysis(frame, labels, how, n_bootstrap=int(n_bootstrap), seed=seed,
                                                 level=level)
    if cleaning is not None:
        metrics["cleaning"] = cleaning
    metrics["bootstrap"] = {
        "n": int(n_bootstrap),
        "seed": seed,
        "stratified": True,
        "grouped": grouped,
        "n_groups": int(frame["group"].nunique()) if grouped else None,
    }
    metrics["seeds"] = 1  # one trained model: its CIs leave out training noise (SEED_NOTE)
    frame.attrs[WARNINGS_ATTR] = list(dict.fromkeys(warnings))
    return Report(metrics=metrics, predictions=frame, title=title,
                  warnings=list(dict.fromkeys(warnings)))


def _value_ci(value, ci: dict) -> str:
    """``0.812 (0.734 – 0.891)``: the HTML subgroup cells; the bare value when the CI is undefined."""
    return with_ci(value, ci["low"], ci["high"], 3, "{low} \u2013 {high}")


@dataclass
class Report:
    """Result of ``evaluate``: JSON-able ``metrics`` and the validated ``predictions`` table."""

    metrics: dict
    predictions: pd.DataFrame
    title: str = "Evaluation report"
    #: What the numbers must be read with (one sentence or paragraph each, plain text): stripped
    #: whitespace, rows without a group, allowed duplicates, a prediction column that disagrees
    #: with the probabilities, classes absent from the targets. Shown at the top of report.md and
    #: report.html and saved as ``"warnings"`` in metrics.json (``[]`` when there are none).
    warnings: list[str] = field(default_factory=list)
    #: Out-of-distribution scores per image set (``{set name: (N,) default scores}``) for the
    #: histogram of a report with ``metrics["ood"]`` (:func:`dermkit.evaluate.ood.detection_summary`).
    ood_scores: dict | None = None
    #: The robustness stress test (:func:`dermkit.evaluate.stress.stress_table`) of a report with
    #: ``metrics["stress"]``: written as stress.csv, plotted, and tabled in the report.
    stress: pd.DataFrame | None = None
    #: Files next to the report that it links to, ``{what: relative path}`` (e.g. the test data's datasheet).
    links: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.metrics["classes"])

    def metrics_json(self) -> dict:
        """metrics.json content: ``metrics`` with ``"warnings"`` after ``"classes"`` and every
        undefined value (NaN/inf) as ``None`` (JSON null)."""
        out = {}
        for key, value in self.metrics.items():
            out[key] = value
            if key == "classes":
                out["warnings"] = list(self.warnings)
        out.setdefault("warnings", list(self.warnings))
        return io.json_ready(out)

    # -- content shared by the Markdown and HTML renderings

    def _headline_rows(self) -> list[tuple[str, str, str]]:
        m, ci = self.metrics, self.metrics.get("ci", {})
        rows = []
        for key in (*HEADLINE_METRICS, "log_loss"):
            label = _LABELS[key]
            if key == "macro_auc" and len(self.classes) == 2:
                label = f"AUC (positive class: {self.classes[1]})"
            rows.append((label, format_metric(m[key]), format_ci(ci.get(key)) if key in ci else "\u2014"))
        return rows

    def _per_class_rows(self) -> list[list[str]]:
        return [
            [name, *(format_metric(stats[k]) for k in _PER_CLASS), format_metric(stats["support"])]
            for name, stats in self.metrics["per_class"].items()
        ]

    def _sens_at_spec_rows(self) -> list[tuple[str, str, str]]:
        ci = self.metrics.get("ci", {})
        return [
            (key, format_metric(value), format_ci(ci.get(f"sensitivity_at_specificity_{key}")))
            for key, value in self.metrics.get("sensitivity_at_specificity", {}).items()
        ]

    def _method_note(self) -> str:
        b = self.metrics.get("bootstrap", {})
        if not b.get("n"):
            return "No bootstrap resamples were requested, so no confidence intervals."
        level = next(iter(self.metrics["ci"].values()))["level"]
        unit = (
            f"resampling whole groups (lesions/patients, {b['n_groups']} groups) stratified by "
            "their majority class"
            if b.get("grouped")
            else "stratified by true class"
        )
        return (
            f"{level:.0%} confidence intervals: percentile bootstrap with {b['n']} resamples "
            f"(seed {b['seed']}), {unit}. Label metrics use the prediction column; AUC, ECE, "
            "Brier and log loss use the predicted probabilities."
            + (f" {SEED_NOTE}" if self.metrics.get("seeds", 1) == 1 else "")
        )

    def _selective_rows(self) -> list[list[str]]:
        sel = self.metrics.get("selective")
        if not sel:
            return []
        ci = sel.get("ci", {})
        rows = []
        for key, point in sel["at_coverage"].items():
            mel = "melanoma_sensitivity" in point
            rows.append([f"{float(key):.0%}", str(point["n_decided"]), format_metric(point["accuracy"]),
                         format_ci(ci.get(f"accuracy_at_{key}")),
                         format_metric(point["melanoma_sensitivity"]) if mel else "n/a",
                         format_ci(ci.get(f"melanoma_sensitivity_at_{key}")) if mel else "n/a",
                         format_metric(point["melanomas_deferred"]) if mel else "n/a"])
        rows.append(["100%", str(self.metrics["n"]), format_metric(1 - sel["error_rate"]), "\u2014", "", "", ""])
        return rows

    def _selective_note(self) -> str:
        sel = self.metrics["selective"]
        mel = sel.get("melanoma_class")
        return (f"Area under the risk-coverage curve (AURC, lower is better): {format_metric(sel['aurc'])} "
                f"(95% CI {format_ci(sel.get('ci', {}).get('aurc'))}). At each coverage the model decides the "
                "most confident cases (max predicted probability) and defers the rest; accuracy is over the "
                "decided cases. "
                + (f"Melanoma (class {mel!r}) sensitivity is over the decided melanomas; 'melanomas deferred' "
                   "is the fraction of all melanomas the model abstained on." if mel else
                   "No class is named melanoma (mel/melanoma), so no melanoma sensitivity."))

    def _subgroups_html(self) -> list[str]:
        esc = html.escape
        sub = self.metrics["subgroups"]
        note = subgroups_markdown(sub).split("\n")[2]

        def cells(entry):
            return [_value_ci(entry["metrics"][k], entry["ci"][k]) for k in SUBGROUP_METRICS]

        rows = [["overall", "all", sub["overall"]["n"], sub["overall"]["n_melanoma"], *cells(sub["overall"]), ""]]
        gaps = []
        for a in sub["attributes"]:
            rows += [[a["attribute"], lv["level"], lv["n"], lv["n_melanoma"], *cells(lv), "; ".join(lv["flags"])]
                     for lv in a["levels"]]
            for key, g in a["gaps"].items():
                gaps.append([a["attribute"], SUBGROUP_METRICS[key],
                             "n/a" if g["worst"] is None else _value_ci(g["gap"], g["ci"]),
                             "" if g["worst"] is None else f"{g['worst']} vs {g['best']}",
                             format_metric(g["p"]) if g["worst"] is not None else g.get("note", "")])
        return ["<h2>Subgroups</h2>", f"<p class='note'>{esc(note)}</p>",
                html_table(["Attribute", "Subgroup", "n", "Melanomas", *SUBGROUP_METRICS.values(), "Flag"], rows),
                "<h3>Worst minus best subgroup</h3>",
                html_table(["Attribute", "Metric", "Gap (95% CI)", "Worst vs best", "p"], gaps)]

    def _cleaning_note(self) -> str:
        c = self.metrics["cleaning"]
        return (f"The metrics above are on the cleaned split: {c['n_cleaned']} of {c['n_full']} images, "
                f"{c['n_excluded']} left out by the exclusion list" + (f" ({c['note']})" if c.get("note") else "")
                + ". Full and cleaned split side by side; the difference is cleaned - full, its CI and p from a "
                "paired bootstrap (the same resamples of the full split, the cleaned metric on their kept rows).")

    _CLEANING_HEADER = ("Metric", "Full split (95% CI)", "Cleaned split (95% CI)", "Cleaned - full", "95% CI",
                        "p (bootstrap)")

    def _ood_rows(self) -> list[list[str]]:
        o = self.metrics["ood"]
        rows = [[o["id"], str(o["n_id"]), f"{o['id_accepted']:.1%}", "\u2014", "\u2014", "\u2014"]]
        for name, entry in o["sets"].items():
            for score, r in entry["scores"].items():
                rows.append([name, str(entry["n"]), f"{entry['accepted']:.1%}" if score == o["default"] else "",
                             score + (" (default)" if score == o["default"] else ""),
                             with_ci(r["auroc"], r["ci"]["auroc"]["low"], r["ci"]["auroc"]["high"]),
                             with_ci(r["fpr95"], r["ci"]["fpr95"]["low"], r["ci"]["fpr95"]["high"])])
        return rows

    def _ood_note(self) -> str:
        o = self.metrics["ood"]
        return (f"Out-of-distribution detection: the model's detector ({o['default']} score by default, threshold "
                f"{o['threshold']:.4g}) on the {o['id']} images against each other set. 'Accepted' is the share "
                f"the threshold takes as in-distribution. {o['how']}.")

    _OOD_HEADER = ("Images", "n", "Accepted", "Score", "AUROC (95% CI)", "FPR at 95% TPR (95% CI)")

    def _figure_names(self) -> dict[str, str]:
        names = dict(FIGURES)
        if self.ood_scores:
            names[OOD_FIGURE[0]] = OOD_FIGURE[1]
        if self.stress is not None:
            names[STRESS_FIGURE[0]] = STRESS_FIGURE[1]
        if self.metrics.get("subgroups"):
            names[SUBGROUP_FIGURE[0]] = SUBGROUP_FIGURE[1]
        return names

    # -- renderings

    def to_markdown(self) -> str:
        """Markdown report; the figures are linked as PNG files next to it."""
        m = self.metrics
        lines = [f"# {self.title}", ""]
        for warning in self.warnings:
            lines += [f"> **Warning:** {markdown_cell(warning)}", ""]
        lines += [f"- {what}: [{path}]({path})" for what, path in self.links.items()]
        lines += [f"- Samples: {m['n']}",
                 f"- Classes ({len(self.classes)}): {', '.join(self.classes)}", "",
                 self._method_note(), "", "## Headline metrics", ""]
        lines += [markdown_table(["Metric", "Value", "95% CI"], self._headline_rows())]
        if "sensitivity_at_specificity" in m:
            positive = self.classes[1]
            lines += [f"## Sensitivity at fixed specificity (positive class: {positive})", ""]
            lines += [markdown_table(["Specificity", "Sensitivity", "95% CI"], self._sens_at_spec_rows())]
        if m.get("cleaning"):
            lines += ["## Full vs cleaned split", "", self._cleaning_note(), ""]
            lines += [markdown_table(list(self._CLEANING_HEADER), cleaning_rows(m["cleaning"]))]
        lines += ["## Per-class metrics (one-vs-rest)", ""]
        lines += [markdown_table(["Class", "Sensitivity", "Specificity", "PPV", "NPV", "F1", "AUC", "Support"],
                                 self._per_class_rows())]
        lines += ["## Confusion matrix (rows = true class, columns = predicted class)", ""]
        lines += [markdown_table(["True \\ Predicted", *self.classes],
                                 [[name, *map(str, row)] for name, row in zip(self.classes, m["confusion_matrix"])])]
        selective = self._selective_rows()
        if selective:
            lines += ["## Selective prediction (abstain on the lowest maximum probability)", "",
                      self._selective_note(), ""]
            lines += [markdown_table(["Coverage", "Decided", "Accuracy", "95% CI", "Melanoma sensitivity", "95% CI",
                                      "Melanomas deferred"], selective)]
        if m.get("subgroups"):
            lines += [subgroups_markdown(m["subgroups"]), ""]
        if m.get("ood"):
            lines += ["## Out-of-distribution detection", "", self._ood_note(), ""]
            lines += [markdown_table(list(self._OOD_HEADER), self._ood_rows())]
        if self.stress is not None:
            lines += [stress_markdown(self.stress, m["stress"]["summary"]), ""]
        lines += ["## Figures", ""]
        lines += [f"![{alt}]({name})\n" for name, alt in self._figure_names().items()]
        return "\n".join(lines)

    def to_html(self, images: dict[str, bytes] | None = None) -> str:
        """Single-file HTML report; ``images`` (file name -> PNG bytes) become data URIs."""
        esc = html.escape
        m = self.metrics
        parts = [
            "<!DOCTYPE html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            *(f"<p class='warning'><b>Warning:</b> {esc(w)}</p>" for w in self.warnings),
            f"<p>Samples: <b>{m['n']}</b> &middot; Classes ({len(self.classes)}): "
            f"{esc(', '.join(self.classes))}</p>",
            f"<p class='note'>{esc(self._method_note())}</p>",
            *(f"<p>{esc(what)}: <a href='{esc(path)}'>{esc(path)}</a></p>" for what, path in self.links.items()),
            "<h2>Headline metrics</h2>",
            html_table(["Metric", "Value", "95% CI"], self._headline_rows()),
        ]
        if "sensitivity_at_specificity" in m:
            parts += [
                f"<h2>Sensitivity at fixed specificity (positive class: "
                f"{esc(self.classes[1])})</h2>",
                html_table(["Specificity", "Sensitivity", "95% CI"], self._sens_at_spec_rows()),
            ]
        if m.get("cleaning"):
            parts += ["<h2>Full vs cleaned split</h2>", f"<p class='note'>{esc(self._cleaning_note())}</p>",
                      html_table(list(self._CLEANING_HEADER), cleaning_rows(m["cleaning"]))]
        parts += [
            "<h2>Per-class metrics (one-vs-rest)</h2>",
            html_table(["Class", "Sensitivity", "Specificity", "PPV", "NPV", "F1", "AUC", "Support"],
                       self._per_class_rows()),
            "<h2>Confusion matrix (rows = true class, columns = predicted class)</h2>",
            html_table(["True \\ Predicted", *self.classes],
                       [[name, *row] for name, row in zip(self.classes, m["confusion_matrix"])]),
        ]
        selective = self._selective_rows()
        if selective:
            parts += ["<h2>Selective prediction (abstain on the lowest maximum probability)</h2>",
                      f"<p class='note'>{esc(self._selective_note())}</p>",
                      html_table(["Coverage", "Decided", "Accuracy", "95% CI", "Melanoma sensitivity", "95% CI",
                                  "Melanomas deferred"], selective)]
        if m.get("subgroups"):
            parts += self._subgroups_html()
        if m.get("ood"):
            parts += ["<h2>Out-of-distribution detection</h2>", f"<p class='note'>{esc(self._ood_note())}</p>",
                      html_table(list(self._OOD_HEADER), self._ood_rows())]
        if self.stress is not None:
            parts += ["<h2>Robustness stress test</h2>", f"<p>{esc(m['stress']['summary']['line'])}</p>",
                      "<p class='note'>Differences are condition - clean with 95% CIs and p from a paired bootstrap; "
                      "flipped = share of images whose predicted class changes. Details: stress.csv.</p>",
                      html_table(list(STRESS_HEADER), stress_rows(self.stress))]
        parts.append("<h2>Figures</h2>")
        for name, alt in self._figure_names().items():
            if images and name in images:
                data = base64.b64encode(images[name]).decode("ascii")
                parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(alt)}'>"
                             f"<figcaption>{esc(alt)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def figures(self) -> dict:
        """The report's matplotlib figures, keyed by PNG file name."""
        from . import plots  # imported lazily: matplotlib is slow to import

        classes, y_true, proba, y_pred = prediction_arrays(self.predictions)
        cm = self.metrics["confusion_matrix"]
        curve = risk_coverage(y_true, proba, y_pred)
        curve["points"] = list((self.metrics.get("selective") or {}).get("at_coverage", {}).values())
        out = {
            "confusion_matrix.png": plots.plot_confusion_matrix(cm, classes),
            "confusion_matrix_normalized.png": plots.plot_confusion_matrix(cm, classes, normalize=True),
            "roc.png": plots.plot_roc_curves(y_true, proba, classes),
            "reliability.png": plots.plot_reliability(y_true, proba),
            "risk_coverage.png": plots.plot_risk_coverage(curve),
        }
        if self.metrics.get("subgroups"):
            out[SUBGROUP_FIGURE[0]] = forest_figure(self.metrics["subgroups"], self.title)
        if self.stress is not None:
            out[STRESS_FIGURE[0]] = stress_figure(self.stress, title=f"Robustness: {self.title}")
        if self.ood_scores:
            o = self.metrics.get("ood") or {}
            out[OOD_FIGURE[0]] = score_histogram_figure(self.ood_scores, o.get("threshold"),
                                                        f"Out-of-distribution scores ({o.get('default', 'default')})")
        return out

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write metrics.json, predictions.csv, the PNG figures, report.md and report.html."""
        out = Path(out_dir)
        # Render before touching the folder, so a failure leaves no half-written report behind.
        figures = self.figures()
        metrics = self.metrics_json()
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "metrics.json", metrics)
        io.write_csv(out / "predictions.csv", self.predictions)
        images = {}
        for name, fig in figures.items():
            io.save_figure(out / name, fig)
            images[name] = (out / name).read_bytes()
        if self.stress is not None:
            io.write_csv(out / "stress.csv", self.stress)
        if self.metrics.get("subgroups"):
            io.write_csv(out / "subgroups.csv", subgroup_table(self.metrics["subgroups"]))
            io.write_csv(out / "subgroup_gaps.csv", gap_table(self.metrics["subgroups"]))
        io.write_text(out / "report.md", self.to_markdown())
        io.write_text(out / "report.html", self.to_html(images))
        return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #4c72b0;padding-bottom:.3rem}
h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
thead th{background:#eef2f8;text-align:center}
tbody th{text-align:left;font-weight:600;background:#fafafa}
.note{color:#555;font-size:.9rem}
.warning{background:#fff4e5;border-left:4px solid #e08a00;padding:.5rem .8rem}
figure{margin:1rem 0}
img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{color:#555;font-size:.85rem}
""".strip()
