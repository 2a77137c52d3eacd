"""A catalogue of bad predictions CSVs: each is refused with a DataError, or evaluated with a
Report warning, whose message names the file, the row/column and how to fix it.

Every case runs through the Python API (``evaluate``) and through the CLI (``dermkit evaluate``):
refused inputs exit 2 and leave no report folder behind; warned inputs exit 0 with the warning in
metrics.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from dermkit.errors import DataError
from dermkit.evaluate import MISSING_TOKENS, evaluate, read_predictions

CLASSES = ["akiec", "bcc", "mel", "nv"]
N = 84


def base_frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    """A valid 4-class predictions table; prediction = argmax of the probabilities."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)  # every class occurs
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), y] += 2.0
    proba = np.exp(logits)
    proba /= proba.sum(axis=1, keepdims=True)
    frame = pd.DataFrame({
        "image": [f"ISIC_{i:07d}" for i in range(n)],
        "target": [CLASSES[i] for i in y],
        "prediction": [CLASSES[i] for i in proba.argmax(axis=1)],
    })
    for k, name in enumerate(CLASSES):
        frame[f"prob:{name}"] = proba[:, k]
    return frame


def _set(frame: pd.DataFrame, rows, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    if not isinstance(value, (int, float)) or column.startswith("prob:"):
        frame[column] = frame[column].astype(object)
    frame.loc[rows, column] = value
    return frame


def _argmin_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    proba = frame[[f"prob:{c}" for c in CLASSES]].to_numpy()
    frame["prediction"] = [CLASSES[i] for i in proba.argmin(axis=1)]
    return frame


def _na_groups(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["group"] = ["NA"] * 42 + [f"lesion_{i // 2}" for i in range(N - 42)]
    return frame


def _unnormalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[1, "prob:mel"] = frame.loc[1, "prob:mel"] + 0.3
    return frame


def _negative(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[2, "prob:mel"] = -0.1
    frame.loc[2, "prob:nv"] = frame.loc[2, "prob:nv"] + 0.1  # still sums to 1
    return frame


@dataclass
class Case:
    id: str
    build: Callable[[], pd.DataFrame | str]  # a frame (written with to_csv) or raw CSV text
    kind: str  # "error" or "warn"
    expect: tuple[str, ...]  # substrings: the row/column and how to fix it


CASES = [
    # ---------------------------------------------------------------- refused (DataError)
    Case("duplicate_rows", lambda: pd.concat([base_frame(), base_frame().iloc[:20]]), "error",
         ("20 image id(s) occur more than once", "'ISIC_0000000'", "lines 2, 86",
          "Remove the duplicate rows", "allow_duplicates=True", "--allow-duplicates")),
    Case("target_NA", lambda: _set(base_frame(), [3, 7], "target", "NA"), "error",
         ("missing target", "'NA'", "line 5 (image 'ISIC_0000003')", "line 9", "fill it in")),
    Case("target_empty", lambda: _set(base_frame(), [10], "target", ""), "error",
         ("missing target", "line 12 (image 'ISIC_0000010')", "fill it in")),
    Case("target_null", lambda: _set(base_frame(), [0], "target", "null"), "error",
         ("missing target", "'null'", "line 2", "drop the rows without ground truth")),
    Case("target_case_variant", lambda: _set(base_frame(), [0, 4], "target", "AKIEC"), "error",
         ("target 'AKIEC' differs only in letter case", "class 'akiec'", "column 'prob:akiec'",
          "line 2 (image 'ISIC_0000000')", "line 6", "normalise the target column")),
    Case("prediction_case_variant", lambda: _set(base_frame(), [5], "prediction", "Mel "), "error",
         ("prediction 'Mel' differs only in letter case", "class 'mel'", "line 7",
          "normalise the prediction column")),
    Case("prediction_missing", lambda: _set(base_frame(), [6], "prediction", "N/A"), "error",
         ("missing prediction", "line 8", "fill in the decided class")),
    Case("unknown_prediction_class", lambda: _set(base_frame(), [4], "prediction", "df"), "error",
         ("prediction 'df' is not one of the classes", "line 6 (image 'ISIC_0000004')",
          "add a 'prob:df' probability column")),
    Case("target_without_prob_column", lambda: _set(base_frame(), [8], "target", "bkl"), "error",
         ("target 'bkl' is not one of the classes", "line 10", "add a 'prob:bkl'")),
    Case("probabilities_do_not_sum_to_1", lambda: _unnormalised(base_frame()), "error",
         ("probabilities sum to 1.3", "line 3 (image 'ISIC_0000001')",
          "one softmax distribution")),
    Case("negative_probability", lambda: _negative(base_frame()), "error",
         ("'prob:mel' has -0.1, outside [0, 1]", "line 4", "apply softmax")),
    Case("infinite_probability", lambda: _set(base_frame(), [9], "prob:bcc", "inf"), "error",
         ("'prob:bcc' has inf, outside [0, 1]", "line 11", "apply softmax")),
    Case("non_numeric_probability", lambda: _set(base_frame(), [2], "prob:bcc", "high"), "error",
         ("'prob:bcc' has a non-numeric value 'high'", "line 4", "plain numbers in [0, 1]")),
    Case("decimal_comma_probability", lambda: _set(base_frame(), [2], "prob:bcc", "0,5"), "error",
         ("non-numeric value '0,5'", "line 4", "'.' as the decimal point")),
    Case("nan_probability", lambda: _set(base_frame(), [6], "prob:nv", "NaN"), "error",
         ("'prob:nv' is missing/NaN", "line 8 (image 'ISIC_0000006')", "re-export the model")),
    Case("NA_probability", lambda: _set(base_frame(), [6], "prob:nv", "NA"), "error",
         ("'prob:nv' is missing/NaN", "line 8", "re-export the model")),
    Case("empty_file", lambda: "", "error", ("file is empty", "expected a CSV header")),
    Case("header_only", lambda: base_frame().iloc[:0], "error",
         ("no prediction rows", "only a header", "one row per evaluated image")),
    Case("semicolon_delimiter", lambda: base_frame().to_csv(index=False, sep=";"), "error",
         ("semicolon-separated", "image;target", "re-save the file with ','")),
    Case("tab_delimiter", lambda: base_frame().to_csv(index=False, sep="\t"), "error",
         ("tab-separated", "re-save the file with ','")),
    Case("missing_target_column", lambda: base_frame().drop(columns=["target"]), "error",
         ("missing required column(s) 'target'", "rename or add")),
    Case("single_prob_column", lambda: base_frame()[["image", "target", "prediction",
                                                     "prob:akiec"]], "error",
         ("found 1 probability column(s)", "one 'prob:<class>' column per class")),
    Case("class_named_NA", lambda: base_frame().rename(columns={"prob:nv": "prob:NA"})
         .replace({"nv": "NA"}), "error",
         ("column 'prob:NA' names the class 'NA'", "missing value", "rename the class")),
    Case("classes_differ_only_in_case", lambda: base_frame().rename(columns={"prob:nv": "prob:MEL"})
         .replace({"nv": "MEL"}), "error",
         ("'prob:mel' and 'prob:MEL'", "differ only in letter case", "rename one of the classes")),
    Case("missing_image_id", lambda: _set(base_frame(), [3], "image", ""), "error",
         ("missing 'image' id", "line 5", "give every row the image id")),
    # ------------------------------------------------------------- evaluated with a warning
    Case("NA_groups", lambda: _na_groups(base_frame()), "warn",
         ("42 row(s) have no group id", "line 2 (image 'ISIC_0000000')", "its own cluster",
          "not pooled", "Fill in their lesion/patient ids")),
    Case("target_trailing_space", lambda: _set(base_frame(), [0, 4], "target", "akiec "), "warn",
         ("Stripped surrounding whitespace from 2 target value(s)",
          "line 2 (image 'ISIC_0000000')", "'akiec ' -> 'akiec'")),
    Case("prob_column_trailing_space", lambda: base_frame().rename(
        columns={"prob:akiec": "prob:akiec "}), "warn",
         ("Stripped surrounding whitespace from column name(s)", "'prob:akiec ' -> 'prob:akiec'")),
    Case("prediction_is_argmin", lambda: _argmin_predictions(base_frame()), "warn",
         ("'prediction' column disagrees with the argmax", f"on {N} of {N} rows",
          "'ISIC_0000000'", "accuracy, balanced accuracy, macro/weighted F1, Cohen's kappa",
          "AUC (macro and per-class)", "ECE", "Brier score", "log loss",
          "same model", "class order")),
    Case("single_class_targets", lambda: base_frame().assign(target="mel"), "warn",
         ("3 of the 4 classes never occur in the targets", "'akiec', 'bcc', 'nv'",
          "Only 'mel' occurs", "Undefined (null in metrics.json, n/a in the reports): macro_auc",
          "evaluate on a set that contains every class")),
    Case("absent_class", lambda: base_frame().query("target != 'nv'"), "warn",
         ("1 of the 4 classes never occur in the targets: 'nv'",
          "macro_auc is the mean one-vs-rest AUC over the 3 present classes only",
          "balanced_accuracy")),
]
ERRORS = [c for c in CASES if c.kind == "error"]
WARNINGS = [c for c in CASES if c.kind == "warn"]


def write_case(case: Case, folder) -> object:
    path = folder / f"{case.id}.csv"
    content = case.build()
    if isinstance(content, str):
        path.write_text(content)
    else:
        content.to_csv(path, index=False)
    return path


def assert_clean_numbers(message: str) -> None:
    assert "np.float64" not in message and "np.str_" not in message and "np.int" not in message


def test_catalogue_is_large_enough():
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)
    assert len(ERRORS) >= 15 and len(WARNINGS) >= 5


@pytest.mark.parametrize("case", ERRORS, ids=[c.id for c in ERRORS])
def test_refused_with_a_message_that_says_where_and_how(case, tmp_path):
    path = write_case(case, tmp_path)
    with pytest.raises(DataError) as err:
        evaluate(path, n_bootstrap=10)
    message = str(err.value)
    assert message.startswith(f"{path}: ")  # names the file
    for text in case.expect:
        assert text in message, f"{text!r} not in {message!r}"
    assert_clean_numbers(message)


@pytest.mark.parametrize("case", WARNINGS, ids=[c.id for c in WARNINGS])
def test_warned_in_the_report(case, tmp_path):
    path = write_case(case, tmp_path)
    report = evaluate(path, n_bootstrap=10)
    matching = [w for w in report.warnings if all(text in w for text in case.expect)]
    assert matching, f"no warning with {case.expect} in {report.warnings}"
    assert matching[0].startswith(f"{path}: ")  # names the file
    assert_clean_numbers(" ".join(report.warnings))
    assert "**Warning:**" in report.to_markdown().split("## Headline metrics")[0]


# ------------------------------------------------------------------------------ through the CLI


def run_cli(path, out, capsys) -> tuple[int, str]:
    from dermkit.cli import main

    code = main(["evaluate", "--predictions", str(path), "--out", str(out),
                 "--n-bootstrap", "10"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", ERRORS, ids=[c.id for c in ERRORS])
def test_cli_refuses_with_exit_2_and_writes_nothing(case, tmp_path, capsys):
    path = write_case(case, tmp_path)
    out = tmp_path / "report"
    code, printed = run_cli(path, out, capsys)
    assert code == 2, printed
    assert not out.exists()
    assert "Traceback" not in printed
    flat = " ".join(printed.split())  # the console may wrap long lines
    assert path.name in flat and " ".join(case.expect[0].split()) in flat


@pytest.mark.parametrize("case", WARNINGS, ids=[c.id for c in WARNINGS])
def test_cli_evaluates_with_the_warning_in_metrics_json(case, tmp_path, capsys):
    path = write_case(case, tmp_path)
    out = tmp_path / "report"
    code, printed = run_cli(path, out, capsys)
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert any(all(text in w for text in case.expect) for w in metrics["warnings"])
    markdown = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert markdown.index("**Warning:**") < markdown.index("## Headline metrics")
    assert html.index("class='warning'") < html.index("<h2>Headline metrics</h2>")


# ---------------------------------------------------------------------- specific root causes


def test_duplicates_are_refused_unless_allowed(tmp_path):
    frame = pd.concat([base_frame(), base_frame().iloc[:20]])
    path = tmp_path / "dups.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="occur more than once"):
        read_predictions(path)
    with pytest.raises(DataError, match=r"rows 1, 85"):  # a DataFrame is checked too
        evaluate(frame, n_bootstrap=10)
    report = evaluate(path, n_bootstrap=10, allow_duplicates=True)
    assert report.metrics["n"] == N + 20  # the caller said these are distinct cases
    assert sum("Repeated image ids" in w for w in report.warnings) == 1
    # The CLI's path: read the file, then evaluate the frame; the warning is not doubled.
    again = evaluate(read_predictions(path, allow_duplicates=True), n_bootstrap=10,
                     allow_duplicates=True)
    assert sum("Repeated image ids" in w for w in again.warnings) == 1
    assert evaluate(base_frame(), n_bootstrap=10).metrics["n"] == N


def test_missing_groups_are_their_own_clusters(tmp_path):
    frame = _na_groups(base_frame())
    path = tmp_path / "groups.csv"
    frame.to_csv(path, index=False)
    report = evaluate(path, n_bootstrap=10)
    # 42 rows without a group = 42 clusters (not 1), plus 21 real lesions.
    assert report.metrics["bootstrap"]["n_groups"] == 42 + 21
    assert report.predictions["group"].iloc[0] == "ISIC_0000000"
    # Other spellings of "missing", empty cells and real NaN in a DataFrame behave the same.
    for token in ("", "nan", "NULL", " None ", "N/A", np.nan, None):
        frame = base_frame()
        frame["group"] = [token] * 10 + [f"lesion_{i // 2}" for i in range(N - 10)]
        assert evaluate(frame, n_bootstrap=0).metrics["bootstrap"]["n_groups"] == 10 + 37
    # An image id that equals a real group id does not join that group.
    frame = base_frame().iloc[:8].copy()
    frame["group"] = ["NA", "ISIC_0000000", "g", "g", "h", "h", "k", "k"]
    groups = read_predictions(frame)["group"]
    assert groups.nunique() == 5 and groups.iloc[0] != groups.iloc[1]
    # Explicit groups follow the same rule.
    explicit = [None] * 4 + ["a"] * 80
    assert evaluate(base_frame(), groups=explicit, n_bootstrap=0).metrics["bootstrap"][
        "n_groups"] == 5


def test_missing_tokens_constant():
    assert {"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "none", "-", "?"} <= MISSING_TOKENS


def test_whitespace_is_stripped_but_case_is_not_guessed(tmp_path):
    frame = _set(base_frame(), [0, 4], "target", " akiec ")
    report = evaluate(frame, n_bootstrap=0)
    assert report.metrics["per_class"]["akiec"]["support"] == 21
    assert report.predictions["target"].iloc[0] == "akiec"
    clean = evaluate(base_frame(), n_bootstrap=0)
    assert clean.warnings == []  # nothing changed, nothing said
    with pytest.raises(DataError, match="differs only in letter case"):
        evaluate(_set(base_frame(), [0], "target", "Akiec"), n_bootstrap=0)


def test_prediction_contradicting_probabilities_is_warned(tmp_path):
    report = evaluate(_argmin_predictions(base_frame()), n_bootstrap=0)
    assert report.metrics["accuracy"] < 0.2 and report.metrics["macro_auc"] > 0.8
    assert any("disagrees with the argmax" in w for w in report.warnings)
    # One disagreeing row in 84 (a tie-break or threshold) stays quiet; so does a tie.
    frame = base_frame()
    frame.loc[0, "prediction"] = next(c for c in CLASSES if c != frame.loc[0, "prediction"])
    assert not evaluate(frame, n_bootstrap=0).warnings
    tie = base_frame().iloc[:4].copy()
    for c in CLASSES:
        tie[f"prob:{c}"] = 0.25
    tie["prediction"] = ["akiec", "bcc", "mel", "nv"]
    assert not any("disagrees" in w for w in evaluate(tie, n_bootstrap=0).warnings)


def test_single_class_metrics_are_null_and_printable(tmp_path):
    from dermkit.evaluate.tables import format_ci, format_metric

    report = evaluate(base_frame().assign(target="mel"), n_bootstrap=20)
    assert math.isnan(report.metrics["macro_auc"])
    report.save(tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert metrics["macro_auc"] is None and metrics["ci"]["macro_auc"]["low"] is None
    assert metrics["per_class"]["akiec"]["auc"] is None
    assert format_metric(report.metrics["macro_auc"]) == "n/a"
    assert format_ci(report.metrics["ci"]["macro_auc"]) == "n/a"
    assert format_metric(None) == "n/a" and format_metric(np.float64(0.5)) == "0.5000"
    assert format_ci({"low": 0.1, "high": 0.25}, 2, "[{low}, {high}]") == "[0.10, 0.25]"


def test_cli_allow_duplicates_evaluates_repeated_rows_as_distinct_cases(tmp_path, capsys):
    import json as _json

    import numpy as _np
    import pandas as _pd

    from dermkit.cli import main as _main

    rng = _np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=84)
    frame = _pd.DataFrame({"image": [f"i{k}" for k in range(84)], "target": [("a", "b", "c")[k % 3] for k in range(84)],
                           "prediction": [("a", "b", "c")[k] for k in p.argmax(1)],
                           "prob:a": p[:, 0], "prob:b": p[:, 1], "prob:c": p[:, 2]})
    csv = tmp_path / "dup.csv"
    _pd.concat([frame, frame.iloc[:20]]).to_csv(csv, index=False)
    assert _main(["evaluate", "--predictions", str(csv), "--out", str(tmp_path / "refused")]) == 2
    assert "--allow-duplicates" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert _main(["evaluate", "--predictions", str(csv), "--out", str(tmp_path / "ok"), "--allow-duplicates",
                  "--n-bootstrap", "20"]) == 0
    metrics = _json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert metrics["n"] == 104 and any("duplicate" in w.lower() for w in metrics["warnings"])
