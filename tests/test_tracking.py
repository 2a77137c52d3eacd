"""Experiment tracking with MLflow (``tracking: mlflow`` / ``--track mlflow``, dermkit.tracking).

Tiny supervised runs tracked into a temporary local store and read back with MLflow's own client:
the params are the resolved config, the metric history has one point per epoch (a killed and
resumed run included: the resume continues the same MLflow run), the test metrics carry their CI
bounds, the report and model files are artifacts; a suite lands in one experiment; an unreachable
server warns once and the run still writes its folder; a bad ``tracking:`` value is a ConfigError.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import killed_after_first_checkpoint
from dermkit.cli import main
from dermkit.errors import ConfigError
from dermkit.experiment import run_experiment
from dermkit.tracking import MAX_PARAM_VALUE, RECORD, check_mode, epoch_metrics, flat_params, summary_metrics

mlflow_tracking = pytest.importorskip("mlflow.tracking")


@pytest.fixture(autouse=True)
def _no_user_mlflow_settings(monkeypatch):
    """The tests choose the store; a developer's own MLflow settings must not leak in."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


def tiny(data, epochs: int = 2, **extra) -> dict:
    """The cheapest supervised run (a random test_resnet at 32 px, fp32, no OOD detector)."""
    return {"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 32,
            "batch_size": 16, "num_workers": 0, "n_bootstrap": 20, "ood_acceptance": None,
            "engine": {"epochs": epochs, "precision": "fp32", "lr": 3e-3, "warmup_epochs": 0.5}, **extra}


def client_for(store: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses the file store without it
    return mlflow_tracking.MlflowClient(tracking_uri=store.as_uri())


def artifact_files(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_files(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def _yaml(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------ pure helpers


def test_params_are_the_flattened_config_within_mlflow_limits():
    params = flat_params({"method": "supervised", "engine": {"lr": 0.001, "patience": None, "ema_warmup": True},
                          "eval_data": ["ph2", "derm7pt"], "prompt": "x" * 7000, "odd key?": 1})
    assert params["method"] == "supervised"
    assert params["engine.lr"] == "0.001" and params["engine.patience"] == "null"
    assert params["engine.ema_warmup"] == "true"
    assert json.loads(params["eval_data"]) == ["ph2", "derm7pt"]
    assert len(params["prompt"]) == MAX_PARAM_VALUE and params["prompt"].endswith("...(truncated)")
    assert params["odd key_"] == "1"  # MLflow's key alphabet: letters, digits, _ - . / space


def test_epoch_and_summary_metrics_are_named_as_in_tensorboard():
    row = {"epoch": 3, "train_loss": 0.5, "lr": 1e-3, "train_images_per_second": None, "val_macro_auc": float("nan"),
           "val_balanced_accuracy": 0.75, "best": True}
    assert epoch_metrics(row) == {"train/loss": 0.5, "lr": 1e-3, "val/balanced_accuracy": 0.75}
    summary = {"test": {"balanced_accuracy": 0.8, "macro_auc": None},
               "test_ci": {"balanced_accuracy": {"low": 0.7, "high": 0.9, "level": 0.95}, "macro_auc": None},
               "transfer": [{"eval_dataset": "ph2", "test": {"accuracy": 0.6}, "test_ci": {}}],
               "best_epoch": 2, "wall_seconds": 12.5, "best_val_score": None}
    assert summary_metrics(summary) == {"test/balanced_accuracy": 0.8, "test/balanced_accuracy_ci_low": 0.7,
                                        "test/balanced_accuracy_ci_high": 0.9, "test_ph2/accuracy": 0.6,
                                        "best_epoch": 2.0, "wall_seconds": 12.5}


@pytest.mark.parametrize("value, mode", [(None, None), (False, None), ("none", None), ("", None),
                                         ("mlflow", "mlflow"), ("MLflow", "mlflow")])
def test_tracking_values(value, mode):
    assert check_mode(value) == mode


@pytest.mark.parametrize("value", ["wandb", True, 1, ["mlflow"]])
def test_bad_tracking_value_names_the_key_and_the_choices(value):
    with pytest.raises(ConfigError, match=r"c\.yaml: tracking must be one of: mlflow \(or none"):
        check_mode(value, "c.yaml")


# ------------------------------------------------------------------------------ real runs


def test_run_is_tracked_and_its_resume_continues_the_same_mlflow_run(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "runs" / "a"
    config = tiny(tiny_dataset, tracking="mlflow")
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        run_experiment(config, out, progress=False)
    record = json.loads((out / RECORD).read_text())
    store = tmp_path / "runs" / "mlruns"  # the default store: beside the run folder
    assert record["tracking_uri"] == store.as_uri()
    client = client_for(store, monkeypatch)
    assert client.get_run(record["run_id"]).info.status == "KILLED"

    summary = run_experiment(config, out, resume=True, progress=False)
    assert json.loads((out / RECORD).read_text())["run_id"] == record["run_id"]  # the same MLflow run
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "supervised"  # a single run: the method's name

    params = run.data.params
    assert params["method"] == "supervised" and params["tracking"] == "mlflow"
    assert params["model"] == "timm:test_resnet@random" and params["data"] == str(tiny_dataset)
    assert params["engine.epochs"] == "2" and params["image_size"] == "32" and params["ood_acceptance"] == "null"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert set(flat_params(saved)) == set(params)  # every key of the resolved config, and only those

    history = pd.read_csv(out / "history.csv")
    points = client.get_metric_history(run.info.run_id, "val/balanced_accuracy")
    assert [(p.step, p.value) for p in sorted(points, key=lambda p: p.step)] == \
        list(zip(history["epoch"], history["val_balanced_accuracy"]))  # one point per epoch, no repeat
    assert [p.step for p in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]

    metrics = run.data.metrics
    for key in ("balanced_accuracy", "macro_auc"):
        ci = summary["test_ci"][key]
        assert metrics[f"test/{key}"] == pytest.approx(summary["test"][key])
        assert metrics[f"test/{key}_ci_low"] == pytest.approx(ci["low"])
        assert metrics[f"test/{key}_ci_high"] == pytest.approx(ci["high"])
        assert ci["low"] <= metrics[f"test/{key}"] <= ci["high"]
    assert metrics["epochs_run"] == 2

    tags = run.data.tags
    assert tags["method"] == "supervised" and tags["dataset"] == "tiny" and tags["task"] == "all"
    assert tags["run_folder"] == str(out.resolve()) and tags["dermkit_version"]
    files = artifact_files(client, run.info.run_id)
    model = {f"model/{p.relative_to(out / 'model').as_posix()}" for p in (out / "model").rglob("*") if p.is_file()}
    report = {f"eval/test/{p.relative_to(out / 'eval' / 'test').as_posix()}"
              for p in (out / "eval" / "test").rglob("*") if p.is_file()}
    assert {"model/model.json", "eval/test/report.html", "eval/test/predictions.csv"} <= files
    assert model | report | {"config.yaml", "summary.json", "history.csv"} == files


def test_suite_runs_land_in_one_experiment(tiny_dataset, tmp_path, monkeypatch):
    configs = [_yaml(tmp_path / f"{name}.yaml", tiny(tiny_dataset, epochs=1, name=name, lr=lr))
               for name, lr in (("lr_low", 1e-3), ("lr_high", 1e-2))]
    suite = tmp_path / "ablation"
    assert main(["suite", *configs, "--out", str(suite), "--track", "mlflow"]) == 0
    client = client_for(suite / "mlruns", monkeypatch)  # beside the suite's run folders
    experiment = client.get_experiment_by_name("ablation")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["lr_high", "lr_low"]
    assert sorted(r.data.params["engine.lr"] for r in runs) == ["0.001", "0.01"]
    assert all(r.info.status == "FINISHED" and "test/balanced_accuracy" in r.data.metrics for r in runs)


def test_unreachable_server_warns_once_and_the_run_is_kept(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    out = tmp_path / "run"
    assert main(["run", _yaml(tmp_path / "c.yaml", tiny(tiny_dataset, epochs=1)), "--out", str(out),
                 "--track", "mlflow"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: MLflow tracking to http://127.0.0.1:9 failed") == 1, err
    assert "the run goes on untracked" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["balanced_accuracy"] is not None
    assert (out / "model" / "model.json").is_file() and not (out / RECORD).exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["tracking"] == "mlflow"


def test_bad_tracking_value_exits_2_before_any_file(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    config = _yaml(tmp_path / "c.yaml", tiny(tiny_dataset, tracking="wandb"))
    assert main(["run", config, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml: tracking must be one of: mlflow" in " ".join(err.split()) and "Traceback" not in err
    assert main(["run", "--check", config]) == 2
    good = _yaml(tmp_path / "g.yaml", tiny(tiny_dataset))
    assert main(["run", good, "--out", str(out), "--track", "neptune"]) == 2
    assert "--track must be one of: mlflow" in " ".join(capsys.readouterr().err.split())
    assert main(["suite", good, "--out", str(out), "--track", "neptune"]) == 2
    assert not out.exists()
