"""The one evaluation layer: metrics, stratified/grouped bootstrap CIs, figures and reports.

Typical use::

    from dermkit.evaluate import evaluate
    report = evaluate("predictions.csv", n_bootstrap=1000, seed=0, title="HAM10000 test")
    report.save("runs/eval")            # metrics.json, report.md, report.html, PNGs

``plots`` (matplotlib) is imported only when figures are drawn.
"""

from .bootstrap import bootstrap_ci, bootstrap_metrics, percentile_ci, resample_indices
from .metrics import (
    ECE_BINS,
    HEADLINE_METRICS,
    SPECIFICITIES,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    rank_auc,
    sensitivity_at_specificity,
)
from .report import Report, evaluate, read_predictions

__all__ = [
    "ECE_BINS",
    "HEADLINE_METRICS",
    "SPECIFICITIES",
    "Report",
    "bootstrap_ci",
    "bootstrap_metrics",
    "brier_score",
    "classification_metrics",
    "evaluate",
    "expected_calibration_error",
    "percentile_ci",
    "rank_auc",
    "read_predictions",
    "resample_indices",
    "sensitivity_at_specificity",
]
