"""The one evaluation layer: metrics, stratified/grouped bootstrap CIs, figures and reports.

Typical use::

    from dermkit.evaluate import evaluate
    report = evaluate("predictions.csv", n_bootstrap=1000, seed=0, title="HAM10000 test")
    report.save("runs/eval")            # metrics.json, report.md, report.html, PNGs

``plots`` (matplotlib) is imported only when figures are drawn.
"""

import sys
import types

from ..values import MISSING_TOKENS, is_missing
from .bootstrap import bootstrap_ci, bootstrap_metrics, percentile_ci, resample_indices
from .calibration import apply_temperature, calibration_report, fit_temperature
from .compare import compare_predictions, delong_test, mcnemar_test
from .metrics import (
    ECE_BINS,
    HEADLINE_METRICS,
    LABEL_METRICS,
    PROBABILITY_METRICS,
    SPECIFICITIES,
    brier_score,
    class_coverage_warning,
    classification_metrics,
    expected_calibration_error,
    melanoma_index,
    rank_auc,
    sensitivity_at_specificity,
)
from .predictions import read_predictions
from .report import Report, evaluate
from .selective import risk_coverage, selective_metrics
from .subgroups import subgroup_analysis, subgroup_labels
from .tables import format_ci, format_metric


def evaluate_and_save(predictions, out=None, n_bootstrap: int = 1000, seed: int = 0, title: str | None = None,
                      groups=None, allow_duplicates: bool = False) -> Report:
    """:func:`evaluate` a predictions table (or CSV), saving the report in ``out`` when given.

    This is ``dermkit.evaluate(...)`` of the public API. Because ``dermkit.evaluate`` is also this
    package's name, the package itself is callable with the same arguments, so the call works
    whichever of the two the attribute ``dermkit.evaluate`` holds.
    """
    report = evaluate(predictions, groups=groups, n_bootstrap=n_bootstrap, seed=seed,
                      title=title or "dermkit evaluation", allow_duplicates=allow_duplicates)
    if out is not None:
        report.save(out)
    return report


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs) -> Report:
        return evaluate_and_save(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = [
    "ECE_BINS",
    "apply_temperature",
    "calibration_report",
    "compare_predictions",
    "delong_test",
    "fit_temperature",
    "mcnemar_test",
    "melanoma_index",
    "risk_coverage",
    "selective_metrics",
    "subgroup_analysis",
    "subgroup_labels",
    "HEADLINE_METRICS",
    "LABEL_METRICS",
    "MISSING_TOKENS",
    "PROBABILITY_METRICS",
    "class_coverage_warning",
    "format_ci",
    "format_metric",
    "is_missing",
    "SPECIFICITIES",
    "Report",
    "bootstrap_ci",
    "bootstrap_metrics",
    "brier_score",
    "classification_metrics",
    "evaluate",
    "evaluate_and_save",
    "expected_calibration_error",
    "percentile_ci",
    "rank_auc",
    "read_predictions",
    "resample_indices",
    "sensitivity_at_specificity",
]
