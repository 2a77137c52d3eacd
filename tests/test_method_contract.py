"""The method contract, checked for EVERY registered method (a new method is covered without
editing this file; it only has to declare ``tiny_config``).

For each method: ``dermkit run CONFIG`` trains/fits a tiny model -> ``summary.json`` with the one
schema -> the model folder loads with ``dermkit.load_predictor`` -> its probabilities equal the run's
own test predictions -> save -> load gives identical probabilities -> ``dermkit evaluate --model``
reproduces the run's test metrics -> ``dermkit predict --model`` prints them for one image.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

import dermkit
from dermkit.cli import main
from dermkit.experiment import SUMMARY_KEYS
from dermkit.methods import METHODS, list_methods

ALL_METHODS = list_methods()


def test_every_method_is_registered_once_with_a_config_and_tiny_config():
    assert {"supervised", "zeroshot", "linear_probe", "contrastive", "prompt_learning", "fusion", "sae", "cbm",
            "vqa"} <= set(ALL_METHODS)
    for name in ALL_METHODS:
        method = METHODS[name]
        assert method.name == name and method.description
        assert method.tiny_config, f"method {name} must declare tiny_config for the contract test"
        method.config_class()  # every key has a default


def _fill(value, data, clip, sae=None, vlm=None):
    if isinstance(value, str):
        return (value.replace("{data}", str(data)).replace("{clip}", str(clip)).replace("{sae}", str(sae))
                .replace("{vlm}", str(vlm)))
    if isinstance(value, list):
        return [_fill(v, data, clip, sae, vlm) for v in value]
    return value


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory, clip_folder):
    """A tiny trained SAE (the `sae` method's own tiny config) for methods built on one (`{sae}`)."""
    from conftest import make_dataset

    root = tmp_path_factory.mktemp("sae")
    data = make_dataset(root)
    config = {"method": "sae", **{k: _fill(v, data, clip_folder) for k, v in METHODS["sae"].tiny_config.items()},
              "cache_dir": str(root / "cache")}
    dermkit.run(config, out=root / "run", progress=False)
    return root / "run" / "model"


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_contract(method, tiny_dataset, clip_folder, tmp_path, monkeypatch, capsys, request):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    needs_sae = "{sae}" in str(METHODS[method].tiny_config)
    sae = request.getfixturevalue("sae_folder") if needs_sae else None
    vlm = request.getfixturevalue("vlm_folder") if "{vlm}" in str(METHODS[method].tiny_config) else None
    config = {"method": method, "name": f"tiny_{method}",
              **{k: _fill(v, tiny_dataset, clip_folder, sae, vlm) for k, v in METHODS[method].tiny_config.items()}}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"

    assert main(["run", str(path), "--check"]) == 0
    assert main(["run", str(path), "--out", str(run_dir)]) == 0, capsys.readouterr().err

    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["method"] == method and summary["name"] == f"tiny_{method}"
    assert set(summary["test"]) == {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc"}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["method"] == method  # the snapshot is itself a runnable config

    # The model folder loads through the registry and reproduces the run's own test predictions.
    predictor = dermkit.load_predictor(run_dir / "model")
    assert predictor.method in (method, METHODS[method].name)
    card = dermkit.load_dataset(tiny_dataset)
    preds = predictor.predict_split(card, "test", progress=False)
    run_preds = pd.read_csv(run_dir / "eval" / "test" / "predictions.csv")
    prob_cols = [c for c in preds.columns if c.startswith("prob:")]
    assert list(preds["image"]) == list(run_preds["image"])
    np.testing.assert_allclose(preds[prob_cols].to_numpy(), run_preds[prob_cols].to_numpy(), atol=1e-5)

    # save -> load -> identical probabilities.
    predictor.save(tmp_path / "copy")
    again = dermkit.load_predictor(tmp_path / "copy")
    paths = [tiny_dataset / p for p in run_preds["image"][:5]]
    np.testing.assert_allclose(again.predict_paths(paths), predictor.predict_paths(paths), atol=1e-6)
    assert again.classes == predictor.classes

    # The evaluation layer through the CLI: same test metrics as the run's summary.
    assert main(["evaluate", "--model", str(run_dir / "model"), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "eval"), "--n-bootstrap", "20"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key, value in summary["test"].items():
        assert (metrics[key] == pytest.approx(value, abs=1e-9, nan_ok=True) if value is not None
                else metrics[key] is None)

    capsys.readouterr()
    assert main(["predict", str(paths[0]), "--model", str(run_dir / "model"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["top"][0]["class"] in predictor.classes

    # --explain: a Grad-CAM PNG where the model has an image tower to explain, else a clear refusal.
    heat = tmp_path / "heat.png"
    code = main(["predict", str(paths[0]), "--model", str(run_dir / "model"), "--json", "--explain", str(heat)])
    if predictor.saliency_module() is not None:
        assert code == 0 and heat.is_file() and heat.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads(capsys.readouterr().out)[0]["explanation"] == str(heat)
    else:
        assert code == 2 and "no image tower" in capsys.readouterr().err and not heat.exists()


def test_run_refuses_a_finished_run_and_resume_without_a_run(tiny_dataset, clip_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    config = {"method": "zeroshot", "model": str(clip_folder), "data": str(tiny_dataset), "n_bootstrap": 10,
              "num_workers": 0}
    path = tmp_path / "zs.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    before = (tmp_path / "run" / "summary.json").read_text()
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").read_text() == before
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--force"]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("bad, message", [
    ({"method": "magic"}, "method must be one of"),
    ({"method": "supervised", "epochs": "ten"}, "epochs must be an integer"),
    ({"method": "supervised", "lr": -1}, "lr must be > 0"),
    ({"method": "supervised", "modle": "resnet18"}, "unknown key"),
    ({"method": "linear_probe", "fraction": 2}, "fraction must be in"),
    ({"method": "supervised", "data": "no_such_dataset_anywhere"}, "no_such_dataset_anywhere"),
    ({"method": "supervised", "model": "timm:"}, "timm:"),
    ({"method": "zeroshot", "task": "one_vs_one"}, "task must be"),
])
def test_check_names_the_file_and_key_and_writes_nothing(bad, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.yaml" in err and "Traceback" not in err
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_train_and_run_read_the_same_config_file(tiny_dataset, tmp_path):
    config = {"method": "supervised",
              **{k: _fill(v, tiny_dataset, None) for k, v in METHODS["supervised"].tiny_config.items()}}
    path = tmp_path / "sup.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["run", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b")]) == 0  # the snapshot runs
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["method"] == b["method"] == "supervised"
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["engine"]["seed"] == 3
    assert a["test"] == pytest.approx(b["test"])  # same config, same seed: the same run
