"""Repeated seeds (dermkit.seeds): one folder per seed, mean / sample sd by hand, reuse and resume,
the multi-seed comparison (seeds x cases bootstrap, paired t over seeds) and the single-seed note."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import ttest_rel
from sklearn.metrics import balanced_accuracy_score

from conftest import killed_after_first_checkpoint, make_dataset
from dermkit.cli import main
from dermkit.errors import ConfigError, DataError
from dermkit.evaluate import Report, evaluate
from dermkit.evaluate.seed_compare import compare_seed_predictions, seed_comparison_markdown, seed_t_test
from dermkit.experiment import run_experiment, suite_markdown, suite_table
from dermkit.models.checkpoint import load_tensors
from dermkit.seeds import parse_seeds

SEEDS = [0, 1, 2]
SMALL = {"train": 8, "val": 4, "test": 4}  # images per class and split: fast runs


def tiny_config(data, epochs: int = 1, **kw) -> dict:
    cfg = {"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 32,
           "batch_size": 8, "num_workers": 0, "n_bootstrap": 20, "augment": "light", "ood_acceptance": None,
           "engine": {"epochs": epochs, "lr": 3e-3, "precision": "fp32", "warmup_epochs": 0.5}}
    cfg.update(kw)
    return cfg


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: (mtime in ns, sha256)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def _no_report_figures():
    """The report's PNG figures (tested in test_report.py) are most of a tiny run's time; these tests
    read its numbers only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Report, "figures", lambda self: {})
        yield


@pytest.fixture(scope="module")
def suite(tmp_path_factory, _no_report_figures):
    """`dermkit suite base.yaml slow.yaml --seeds 0,1,2 --baseline base`: two tiny recipes (slow: lr
    1e-5, barely trained), three seeds each, one epoch per seed."""
    root = tmp_path_factory.mktemp("seeds")
    data = make_dataset(root, counts=SMALL)
    configs = []
    for name, lr in (("base", 3e-3), ("slow", 1e-5)):
        raw = tiny_config(data)
        raw["engine"]["lr"] = lr
        configs.append(root / f"{name}.yaml")
        configs[-1].write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = root / "suite"
    assert main(["suite", *map(str, configs), "--out", str(out), "--seeds", "0,1,2", "--baseline", "base",
                 "--n-bootstrap", "50"]) == 0
    return configs, out


# ------------------------------------------------------------------------------ running seeds


def test_three_seeds_give_three_models_and_the_summary_by_hand(suite):
    out = suite[1] / "base"
    per_seed = {s: json.loads((out / f"seed-{s}" / "summary.json").read_text()) for s in SEEDS}
    for s in SEEDS:  # each seed a full run with its own engine seed
        assert yaml.safe_load((out / f"seed-{s}" / "config.yaml").read_text())["engine"]["seed"] == s
        assert (out / f"seed-{s}" / "eval" / "test" / "report.md").is_file()
    weights = {s: load_tensors(out / f"seed-{s}" / "model" / "model.safetensors") for s in SEEDS}
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert any(not np.array_equal(weights[a][k].numpy(), weights[b][k].numpy()) for k in weights[a])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"]["seeds"] == SEEDS and summary["seeds"]["n"] == 3
    assert "ddof=1" in summary["seeds"]["sd"]
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        values = [per_seed[s]["test"][metric] for s in SEEDS]
        stats = summary["test_seeds"][metric]
        assert stats["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
        assert stats["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert stats["sd"] == pytest.approx(statistics.stdev(values), abs=1e-12)  # n - 1 denominator
        assert stats["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert (stats["min"], stats["max"]) == (min(values), max(values))
        assert stats["values"] == {str(s): v for s, v in zip(SEEDS, values)}
        assert summary["test"][metric] == pytest.approx(statistics.mean(values))
    # The other headline metrics come from each seed's report.
    eces = [json.loads((out / f"seed-{s}" / "eval" / "test" / "metrics.json").read_text())["ece"] for s in SEEDS]
    assert summary["test_seeds"]["ece"]["sd"] == pytest.approx(statistics.stdev(eces))

    # The model folder is the seed with the best val score (first listed on ties), never chosen on test.
    scores = [per_seed[s]["best_val_score"] for s in SEEDS]
    chosen = SEEDS[scores.index(max(scores))]
    assert summary["seeds"]["selected_seed"] == chosen and "val" in summary["selected_on"]
    assert summary["val_seeds"]["best_val_score"]["values"] == {str(s): v for s, v in zip(SEEDS, scores)}
    for name in ("model.safetensors", "model.json"):
        assert (out / "model" / name).read_bytes() == (out / f"seed-{chosen}" / "model" / name).read_bytes()

    md, html_text = (out / "seeds.md").read_text(), (out / "seeds.html").read_text()
    for text in (md, html_text):
        assert "ddof=1" in text and "seed 2" in text
    assert f"| balanced_accuracy | {summary['test_seeds']['balanced_accuracy']['mean']:.4f} |" in md
    table = pd.read_csv(out / "seeds.csv")
    assert table["seed"].tolist() == SEEDS and table["selected"].tolist() == [s == chosen for s in SEEDS]
    assert table["test_macro_auc"].tolist() == pytest.approx([per_seed[s]["test"]["macro_auc"] for s in SEEDS])


def test_suite_table_shows_mean_and_sd_and_compares_seed_pairs(suite):
    out = suite[1]
    table = pd.read_csv(out / "suite.csv")
    summaries = json.loads((out / "suite.json").read_text())
    for row, summary in zip(table.itertuples(index=False), summaries):
        stats = summary["test_seeds"]["balanced_accuracy"]
        assert row.BACC == f"{100 * stats['mean']:.1f} ± {100 * stats['sd']:.1f}"
        assert row.seeds == "3: 0, 1, 2"
    assert table["ΔBACC vs base"].tolist()[0] == "baseline" and "p=" in table["ΔBACC vs base"][1]
    saved = json.loads((out / "slow" / "compare_vs_base" / "comparison.json").read_text())
    assert saved["seed_pairs"] == [[0, 0], [1, 1], [2, 2]] and saved["pairing"].startswith("by seed value")
    assert "ddof=1" in (out / "suite.md").read_text()


def test_rerun_reuses_finished_seeds_untouched(suite, capsys):
    configs, out = suite
    before = {s: _files(out / "base" / f"seed-{s}") for s in SEEDS}
    old = json.loads((out / "base" / "summary.json").read_text())
    assert main(["run", str(configs[0]), "--out", str(out / "base"), "--seeds", "0,1,2"]) == 0
    assert capsys.readouterr().out.count("reused") == 3
    assert {s: _files(out / "base" / f"seed-{s}") for s in SEEDS} == before
    new = json.loads((out / "base" / "summary.json").read_text())
    assert new["test_seeds"] == old["test_seeds"] and new["seeds"] == old["seeds"]


def test_a_changed_config_is_not_reused(suite, capsys):
    configs, out = suite
    raw = yaml.safe_load(configs[0].read_text())
    raw["engine"]["epochs"] = 2
    changed = configs[0].with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(raw), encoding="utf-8")
    before = _files(out / "base" / "seed-0")
    assert main(["run", str(changed), "--out", str(out / "base"), "--seeds", "0,1,2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "seed-0" in err and "engine.epochs" in err and "--force" in err
    assert _files(out / "base" / "seed-0") == before


def test_a_killed_seed_resumes_with_resume(tmp_path):
    data = make_dataset(tmp_path, counts=SMALL)
    cfg = tiny_config(data, epochs=2, seeds=[3, 4])
    out = tmp_path / "run"
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out, progress=False)
    assert not (out / "seed-3" / "summary.json").exists() and not (out / "summary.json").exists()
    with pytest.raises(ConfigError, match="interrupted.*--resume"):
        run_experiment(cfg, out, progress=False)
    summary = run_experiment(cfg, out, resume=True, progress=False)
    assert summary["seeds"]["seeds"] == [3, 4]
    history = pd.read_csv(out / "seed-3" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]  # continued after epoch 1, not restarted
    assert (out / "seed-4" / "summary.json").is_file()


def test_compare_command_of_a_seed_run_with_itself(suite, tmp_path, capsys):
    out = suite[1] / "base"
    assert main(["compare", str(out), str(out), "--out", str(tmp_path / "cmp"), "--n-bootstrap", "200"]) == 0
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    for metric in ("balanced_accuracy", "macro_auc"):
        r = result["metrics"][metric]
        assert r["difference"] == 0 and r["hierarchical"]["p"] >= 0.9 and r["seed_t"]["p"] >= 0.9
    assert "seeds x cases" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert "smaller than the seed spread" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------------------ the comparison itself


CLASSES = ["bcc", "mel", "nv"]


def recipe_predictions(strength: float, seed: int, n: int = 240, seed_noise: float = 0.6) -> pd.DataFrame:
    """One seed's test predictions of a synthetic recipe: the same test cases (and per-case
    difficulty) for every seed; the signal ``strength`` is the recipe, ``seed_noise`` the training noise."""
    cases = np.random.default_rng(0)
    y = cases.integers(0, 3, n)
    hard = cases.normal(0, 1.0, (n, 3))  # what every model finds hard on these cases
    rng = np.random.default_rng(1000 + seed)
    logits = hard + rng.normal(0, seed_noise, (n, 3)) + rng.normal(0, 0.3, 3)
    logits[np.arange(n), y] += strength
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"image": [f"img_{i:04d}" for i in range(n)], "target": [CLASSES[i] for i in y],
                          "prediction": [CLASSES[i] for i in proba.argmax(axis=1)],
                          "group": [f"lesion_{i // 2}" for i in range(n)]})
    for k, name in enumerate(CLASSES):
        frame[f"prob:{name}"] = proba[:, k]
    return frame


def test_a_recipe_compared_with_itself_gives_p_one():
    a = [recipe_predictions(1.5, s) for s in SEEDS]
    result = compare_seed_predictions(a, a, SEEDS, SEEDS, n_bootstrap=300)
    for r in result["metrics"].values():
        assert r["difference"] == 0 and r["hierarchical"]["p"] == 1.0 and r["seed_t"]["p"] == 1.0


def test_the_same_recipe_with_other_seeds_is_not_called_different():
    a = [recipe_predictions(1.5, s) for s in (0, 1, 2, 3, 4)]
    b = [recipe_predictions(1.5, s) for s in (5, 6, 7, 8, 9)]
    result = compare_seed_predictions(a, b, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], n_bootstrap=500)
    bacc = result["metrics"]["balanced_accuracy"]
    assert bacc["hierarchical"]["p"] > 0.05 and bacc["seed_t"]["p"] > 0.05


def test_a_weaker_recipe_is_detected_with_the_right_sign():
    good = [recipe_predictions(2.0, s) for s in SEEDS]
    weak = [recipe_predictions(0.3, s) for s in SEEDS]  # close to a random head
    result = compare_seed_predictions(good, weak, SEEDS, SEEDS, n_bootstrap=500, names=("good", "weak"))
    for metric in ("balanced_accuracy", "macro_auc", "accuracy"):
        r = result["metrics"][metric]
        assert r["difference"] < 0 and r["hierarchical"]["ci"]["high"] < 0
        assert r["hierarchical"]["p"] < 0.05 and r["seed_t"]["p"] < 0.05
        assert not r["within_seed_spread"]
    # The reverse comparison flips the sign, not the evidence.
    back = compare_seed_predictions(weak, good, SEEDS, SEEDS, n_bootstrap=500)["metrics"]["balanced_accuracy"]
    assert back["difference"] == pytest.approx(-result["metrics"]["balanced_accuracy"]["difference"])
    assert back["hierarchical"]["p"] < 0.05


def test_numbers_match_a_hand_computation():
    a = [recipe_predictions(1.0, s) for s in SEEDS]
    b = [recipe_predictions(1.3, s + 10) for s in SEEDS]
    result = compare_seed_predictions(a, b, SEEDS, [10, 11, 12], n_bootstrap=200)
    bacc = result["metrics"]["balanced_accuracy"]

    def score(frame):
        return balanced_accuracy_score(frame["target"], frame["prediction"])

    va, vb = [score(f) for f in a], [score(f) for f in b]
    assert bacc["a"] == pytest.approx(va) and bacc["b"] == pytest.approx(vb)
    assert bacc["difference"] == pytest.approx(np.mean(np.subtract(vb, va)))
    assert bacc["a_sd"] == pytest.approx(statistics.stdev(va))
    assert bacc["seed_spread"] == pytest.approx(np.sqrt((statistics.stdev(va) ** 2 + statistics.stdev(vb) ** 2) / 2))
    reference = ttest_rel(vb, va)
    assert bacc["seed_t"]["t"] == pytest.approx(reference.statistic) and bacc["seed_t"]["p"] == pytest.approx(
        reference.pvalue)
    assert bacc["seed_t"]["df"] == 2
    se = statistics.stdev(np.subtract(vb, va)) / np.sqrt(3)
    assert bacc["seed_t"]["ci"]["high"] - bacc["seed_t"]["ci"]["low"] == pytest.approx(2 * 4.302653 * se, rel=1e-5)
    assert [pp["difference"] for pp in bacc["per_pair"]] == pytest.approx(np.subtract(vb, va).tolist())


def test_a_difference_within_the_seed_spread_is_said_so():
    a = [recipe_predictions(1.0, s, seed_noise=1.5) for s in SEEDS]
    b = [recipe_predictions(1.05, s + 20, seed_noise=1.5) for s in SEEDS]
    result = compare_seed_predictions(a, b, SEEDS, [20, 21, 22], n_bootstrap=200)
    bacc = result["metrics"]["balanced_accuracy"]
    assert abs(bacc["difference"]) < bacc["seed_spread"] and bacc["within_seed_spread"]
    text = seed_comparison_markdown(result)
    assert "balanced_accuracy: B - A" in text and "smaller than the seed spread" in text
    assert "2 degrees of freedom" in text and "4.30" in text  # how weak the t-test is with 3 seeds


def test_seed_t_test_edge_cases():
    assert seed_t_test([0.0, 0.0, 0.0])["p"] == 1.0
    flat = seed_t_test([0.1, 0.1, 0.1])
    assert np.isnan(flat["p"]) and "no spread" in flat["note"]
    assert np.isnan(seed_t_test([0.1])["p"])


def test_comparison_refuses_other_cases_and_unequal_seed_counts():
    a = [recipe_predictions(1.0, s) for s in SEEDS]
    other = recipe_predictions(1.0, 9)
    other.loc[3, "image"] = "elsewhere"
    with pytest.raises(DataError, match="row 4 differs.*in B seed 2"):
        compare_seed_predictions(a, a[:2] + [other], SEEDS, SEEDS)
    with pytest.raises(DataError, match="same number of seeds"):
        compare_seed_predictions(a, a[:2], SEEDS, SEEDS[:2])
    with pytest.raises(DataError, match="at least two seed pairs"):
        compare_seed_predictions(a[:1], a[:1], [0], [0])


def test_compare_command_refuses_a_seed_run_against_a_single_run(suite, tmp_path, capsys):
    out = suite[1] / "base"
    assert main(["compare", str(out), str(out / "seed-0"), "--out", str(tmp_path / "cmp")]) == 2
    assert "not a finished multi-seed run" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------------------ one seed: the report says so


def test_a_single_run_report_says_training_noise_is_not_in_its_cis(tmp_path):
    frame = recipe_predictions(1.5, 0)
    report = evaluate(frame, n_bootstrap=50)
    assert report.metrics_json()["seeds"] == 1
    sentence = "training noise (retraining with another seed gives another model) is not included"
    assert sentence in report.to_markdown() and sentence in report.to_html()
    report.save(tmp_path / "report")
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["seeds"] == 1
    assert sentence in (tmp_path / "report" / "report.md").read_text()


def test_suite_markdown_explains_mean_and_sd_only_when_seeds_exist():
    single = {"name": "r", "method": "supervised", "dataset": "d", "test": {"balanced_accuracy": 0.5},
              "test_ci": {"balanced_accuracy": {"low": 0.4, "high": 0.6}}}
    assert "ddof=1" not in suite_markdown(suite_table([single]))
    multi = {**single, "name": "m", "table_extra": {"seeds": "2: 0, 1"},
             "test_seeds": {"balanced_accuracy": {"mean": 0.5, "sd": 0.02, "min": 0.48, "max": 0.52}}}
    table = suite_table([single, multi])
    assert table["BACC"].tolist() == ["50.0 [40.0, 60.0]", "50.0 ± 2.0"]
    assert "ddof=1" in suite_markdown(table)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("value, message", [
    ("a,b", "item 1 ('a') is not a whole number"),
    ("0,1.5", "item 2 ('1.5') is not a whole number"),
    ("0,-1", "item 2 ('-1') is not a whole number"),
    ("0,1,0", "seed(s) 0 given twice"),
    ("", "is empty"),
    ("7", "one seed (7) gives no spread"),
])
def test_bad_seeds_option_exits_2_with_a_message(value, message, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "nodata")), encoding="utf-8")
    for command in (["run", str(config)], ["suite", str(config)]):
        assert main([*command, "--out", str(tmp_path / "out"), "--seeds", value]) == 2
        err = capsys.readouterr().err
        assert message in err and "--seeds" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, message", [
    ([], "seeds is empty"),
    ([0, "x"], "item 2 ('x')"),
    ([1, 1], "given twice"),
    ([True, 1], "item 1 (True)"),
    ("0,1", None),
])
def test_bad_seeds_in_a_config(value, message, tmp_path):
    if message is None:
        assert parse_seeds(value, "seeds") == [0, 1]
        return
    data = make_dataset(tmp_path)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_experiment(tiny_config(data, seeds=value), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_check_validates_seeds_in_a_config(tmp_path, capsys):
    data = make_dataset(tmp_path)
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(tiny_config(data, seeds=[0, 1, 2])), encoding="utf-8")
    bad.write_text(yaml.safe_dump(tiny_config(data, seeds=[0, 0])), encoding="utf-8")
    assert main(["run", "--check", str(good)]) == 0
    assert main(["run", "--check", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_seeds_refused_where_they_cannot_work(tmp_path):
    data = make_dataset(tmp_path)
    with pytest.raises(ConfigError, match="both seed .* and seeds"):
        run_experiment(tiny_config(data, seeds=[0, 1], seed=3), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="no training seed"):
        run_experiment({"method": "zeroshot", "data": str(data), "model": "x", "seeds": [0, 1]}, tmp_path / "b",
                       progress=False)
    single = tmp_path / "single"
    (single / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds a single run"):
        run_experiment(tiny_config(data, seeds=[0, 1]), single, progress=False)
