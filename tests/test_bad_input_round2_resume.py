"""Bad input, round two (issue 31, root causes 1 and 2): a resume that notices an edited config, and
a model folder checked against itself.

Resume cases: a run killed after its first epoch (and the same run finished) is resumed with an
edited config (learning rate 500x, image size, seed, augmentation; a finished run's edited
config.yaml; epochs below those trained; an edited run record; a run folder without a record):
exit 2, the message names the run folder and every changed key with its recorded and given value
and the fix, no traceback, and the run folder is byte for byte what it was. ``--allow-config-change``
continues and records the changes (summary.json, run_record.json, model.json).

Model-folder cases: two class names swapped, the method / image size / number of classes edited, a
field added or removed, a JSON list, an unknown or missing format_version, the integrity record
removed, weights truncated, replaced or missing, and folders saved without a record (older dermkit)
whose edits still end in one clear error; such a folder loads with a warning. ``dermkit predict``
exits 2 with the folder and field named, no traceback, no state_dict dump, nothing written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

import dermkit
from conftest import killed_after_first_checkpoint, make_dataset
from dermkit.cli import main
from dermkit.engine.resume import EXECUTION_KEYS, EXTENSION_KEYS, REPORT_KEYS, check_resume
from dermkit.errors import ConfigError, ModelError
from dermkit.experiment import run_experiment


def _config(data: Path) -> dict:
    # The supervised method's smallest network; fp32 keeps it exact; no OOD detector (not what is tested).
    return {"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 32,
            "batch_size": 16, "num_workers": 0, "n_bootstrap": 10, "ood_acceptance": None, "augment": "light",
            "engine": {"epochs": 2, "lr": 0.003, "precision": "fp32"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run killed after epoch 1 of 2, and a copy of it resumed to the end with a changed learning
    rate under --allow-config-change (the override's own test reads it too)."""
    root = tmp_path_factory.mktemp("round2")
    data = make_dataset(root)
    killed = root / "killed"
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        run_experiment(_config(data), killed, progress=False)
    finished = root / "finished"
    shutil.copytree(killed, finished)
    edited = yaml.safe_load((finished / "config.yaml").read_text())
    edited["engine"]["lr"] = 0.006
    path = root / "edited.yaml"
    path.write_text(yaml.safe_dump(edited))
    assert main(["run", str(path), "--out", str(finished), "--resume", "--allow-config-change"]) == 0
    image = sorted((data / "images").glob("*.jpg"))[0]
    return {"root": root, "data": data, "killed": killed, "finished": finished, "image": image}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(src: Path, tmp: Path, name: str = "run") -> Path:
    shutil.copytree(src, tmp / name)
    return tmp / name


def _edited_yaml(run: Path, tmp: Path, **changes) -> str:
    """The run's own config.yaml with ``changes`` (``engine.lr`` style keys), written outside the run."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[last] = value
    path = tmp / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _edit_run_config(run: Path, **changes) -> None:
    """Edit the run folder's own config.yaml (what `dermkit train --resume` reads)."""
    config = yaml.safe_load(Path(_edited_yaml(run, run.parent, **changes)).read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _run_resume(run, tmp, **changes):
    return ["run", _edited_yaml(run, tmp, **changes), "--out", str(run), "--resume"]


def _train_resume(run, tmp, **changes):
    _edit_run_config(run, **changes)
    return ["train", "--out", str(run), "--resume"]


def _edit_record(run, tmp):
    record = json.loads((run / "run_record.json").read_text())
    record["config"]["engine"]["lr"] = 1.5  # made to match a config edited the same way
    (run / "run_record.json").write_text(json.dumps(record))
    return _run_resume(run, tmp, **{"engine.lr": 1.5})


def _without_record(run, tmp):
    (run / "run_record.json").unlink()
    return _run_resume(run, tmp, **{"engine.lr": 1.5})


# (id, which run, argv builder (run copy, tmp) -> argv, words the message must hold)
RESUME_CASES = [
    ("killed-lr-500x", "killed", lambda r, t: _run_resume(r, t, **{"engine.lr": 1.5}),
     ["--resume", "engine.lr 0.003 -> 1.5", "trained under", "--allow-config-change", "another --out"]),
    ("killed-image-size-in-its-config-yaml", "killed", lambda r, t: _train_resume(r, t, image_size=48),
     ["image_size 32 -> 48", "config.yaml", "--allow-config-change"]),
    ("killed-seed-and-augment", "killed", lambda r, t: _run_resume(r, t, augment="strong", **{"engine.seed": 7}),
     ["augment \"light\" -> \"strong\"", "engine.seed 0 -> 7"]),
    ("killed-other-model", "killed", lambda r, t: _run_resume(r, t, model="resnet18"),
     ["model \"timm:test_resnet@random\" -> \"resnet18\""]),
    ("killed-other-task", "killed", lambda r, t: _run_resume(r, t, task="melanoma_vs_rest"),
     ["task null -> \"melanoma_vs_rest\""]),
    ("finished-image-size-in-its-config-yaml", "finished", lambda r, t: _train_resume(r, t, image_size=48),
     ["image_size 32 -> 48", "has finished", "recorded values"]),
    ("finished-epochs-below-trained", "finished", lambda r, t: _run_resume(r, t, **{"engine.epochs": 1}),
     ["engine.epochs 1", "already trained 2 epochs", "epochs >= 2"]),
    ("killed-record-edited", "killed", _edit_record, ["run_record.json", "was edited", "another --out"]),
    ("killed-without-record-compared-with-config-yaml", "killed", _without_record,
     ["has no run_record.json", "engine.lr 0.003 -> 1.5", "config.yaml"]),
    ("allow-change-without-resume", "killed", lambda r, t: ["run", _edited_yaml(r, t), "--out", str(t / "new"),
                                                            "--allow-config-change"],
     ["--allow-config-change", "needs --resume"]),
]


@pytest.mark.parametrize("case", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_with_an_edited_config_is_refused_and_writes_nothing(case, runs, tmp_path, capsys, recwarn):
    _, which, argv, words = case
    run = _copy(runs[which], tmp_path)
    original = _hashes(runs[which])
    args = [str(a) for a in argv(run, tmp_path)]
    before = _hashes(run)  # after the case's own edit
    code = main(args)
    warned = " ".join(str(w.message) for w in recwarn)  # on stderr at the command line
    text = " ".join((capsys.readouterr().err + " " + warned).split())
    assert code == 2, text
    assert "Traceback" not in text
    for word in words:
        assert word.lower() in text.lower(), (word, text)
    if "--resume" in args:
        assert str(run) in text  # the run folder is named
    assert _hashes(run) == before, "a refused resume changed the run folder"
    assert not (tmp_path / "new").exists()
    assert _hashes(runs[which]) == original


def test_the_override_continues_and_records_every_change(runs):
    finished = runs["finished"]
    summary = json.loads((finished / "summary.json").read_text())
    change = summary["resumed"]["config_changes"]["engine.lr"]
    assert (change["from"], change["to"], change["kind"]) == (0.003, 0.006, "override")
    assert summary["resumed"]["allowed_by"] == "--allow-config-change"
    assert summary["epochs_run"] == 2 and set(summary["resumed"]["config_changes"]) == {"engine.lr"}
    record = json.loads((finished / "run_record.json").read_text())
    assert record["config"]["engine"]["lr"] == 0.006  # the record follows the run: a later resume compares with it
    assert record["changes"][-1]["changes"]["engine.lr"]["from"] == 0.003
    assert yaml.safe_load((finished / "config.yaml").read_text())["engine"]["lr"] == 0.006
    card = json.loads((finished / "model" / "model.json").read_text())
    # The saved weights say so exactly when they were trained after the change (epoch 2 selected).
    assert ("resumed_with_changes" in card) == (card["epoch"] == 2)
    if card["epoch"] == 2:
        assert card["resumed_with_changes"]["changes"] == {"engine.lr": [0.003, 0.006]}


def _resolved(run: Path) -> dict:
    return json.loads((run / "run_record.json").read_text())["config"]


def test_what_a_resume_may_change_and_why(runs, tmp_path):
    run = _copy(runs["killed"], tmp_path)
    same = check_resume(run, _resolved(run))
    assert same.changes == {} and not same.write and same.summary() is None  # an unchanged config: nothing to record
    config = _resolved(run)
    config.update(num_workers=3, n_bootstrap=50, eval_batch_size=7)
    config["engine"].update(epochs=4, device="cpu")
    check = check_resume(run, config)
    kinds = {k: v["kind"] for k, v in check.changes.items()}
    assert kinds == {"num_workers": "execution", "n_bootstrap": "report", "eval_batch_size": "execution",
                     "engine.epochs": "extension", "engine.device": "execution"}
    assert check.weight_changes() == {"changes": {"engine.epochs": [2, 4]}, "allowed_by": None}
    assert all(check.changes[k]["why"] for k in check.changes)  # each accepted change says why it is harmless
    assert not set(EXECUTION_KEYS) & set(REPORT_KEYS) and "engine.epochs" in EXTENSION_KEYS
    config["engine"]["lr"] = 0.1
    with pytest.raises(ConfigError, match=r"engine\.lr 0\.003 -> 0\.1"):
        check_resume(run, config)
    allowed = check_resume(run, config, allow_change=True)
    assert allowed.changes["engine.lr"]["kind"] == "override" and allowed.allowed_by == "--allow-config-change"


# ------------------------------------------------------------------------------ model folders


def _card(folder: Path) -> dict:
    return json.loads((folder / "model.json").read_text())


def _write_card(folder: Path, card) -> None:
    (folder / "model.json").write_text(json.dumps(card))


def _edit(**changes):
    def edit(folder: Path) -> None:
        card = _card(folder)
        for key, value in changes.items():
            if value is _DROP:
                del card[key]
            else:
                card[key] = value(card[key]) if callable(value) else value
        _write_card(folder, card)
    return edit


_DROP = object()


def _legacy(**changes):
    """As saved by an older dermkit (format_version 1, no integrity record), then edited."""
    return _edit(format_version=1, integrity=_DROP, **changes)


def _swap(classes):
    return [classes[1], classes[0], *classes[2:]]


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _replace_weights(folder: Path) -> None:
    from dermkit.models.checkpoint import load_tensors, save_tensors

    tensors = load_tensors(folder / "model.safetensors")
    first = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[first] = tensors[first] + 1.0  # a valid file, other weights
    save_tensors(folder / "model.safetensors", tensors, metadata={"format": "dermkit-classifier"})


MODEL_CASES = [
    ("two-classes-swapped", _edit(classes=_swap), ["model.json", "'classes'", "integrity record", "wrong classes"]),
    ("class-added", _edit(classes=lambda c: c + ["extra"]), ["'classes'", "integrity record"]),
    ("method-edited", _edit(method="zeroshot"), ["'method'", "another method"]),
    ("image-size-edited", _edit(image_size=64), ["'image_size'", "another size"]),
    ("field-added", _edit(temperature=3.0), ["'temperature'", "not there when the model was saved"]),
    ("field-removed", _edit(mean=_DROP), ["'mean'", "removed"]),
    ("json-list", lambda f: _write_card(f, [_card(f)]), ["model.json", "JSON list", "not an object"]),
    ("format-version-unknown", _edit(format_version=3), ["format_version 3", "newer dermkit"]),
    ("format-version-text", _edit(format_version="2"), ["format_version \"2\"", "reads 1, 2"]),
    ("format-version-missing", _edit(format_version=_DROP), ["no format_version"]),
    ("integrity-record-removed", _edit(integrity=_DROP), ["no valid integrity record"]),
    ("weights-truncated", _truncate, ["model.safetensors", "truncated", "integrity record"]),
    ("weights-replaced", _replace_weights, ["model.safetensors", "does not match the integrity record"]),
    ("weights-missing", lambda f: (f / "model.safetensors").unlink(), ["model.safetensors", "is missing"]),
    ("legacy-class-added", _legacy(classes=lambda c: c + ["extra"]),
     ["does not match architecture", "4 classes", "in the weights file but", "restore model.json"]),
    ("legacy-method-zeroshot", _legacy(method="zeroshot"), ["lacks the field 'base_model'", "'zeroshot'"]),
    ("legacy-image-size-text", _legacy(image_size="big"), ["image_size must be an integer", "\"big\""]),
    ("legacy-repeated-class", _legacy(classes=lambda c: [c[0], c[0], *c[2:]]), ["more than once"]),
    ("legacy-classes-not-a-list", _legacy(classes="bcc,mel,nv"), ["classes must be a non-empty list"]),
    ("legacy-weights-truncated", lambda f: (_legacy()(f), _truncate(f)), ["model.safetensors", "truncated"]),
]


# Folders without a record whose model.json passes the schema: the warning comes before the error.
WARNED = {"legacy-class-added", "legacy-method-zeroshot", "legacy-image-size-text", "legacy-weights-truncated"}


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_an_edited_model_folder_is_refused_clearly(case, runs, tmp_path, capsys, recwarn):
    name, edit, words = case
    folder = _copy(runs["finished"] / "model", tmp_path, "model")
    edit(folder)
    before = _hashes(tmp_path)
    code = main(["predict", str(runs["image"]), "--model", str(folder)])
    captured = capsys.readouterr()
    text = " ".join((captured.err + captured.out).split())
    assert code == 2, text
    for word in words:
        assert word.lower() in text.lower(), (word, text)
    assert str(folder) in text  # the folder is named
    assert "Traceback" not in text
    assert "Error(s) in loading state_dict" not in text and "size mismatch for" not in text  # no torch dump
    assert _hashes(tmp_path) == before
    warned = [str(w.message) for w in recwarn if "without an integrity record" in str(w.message)]
    assert len(warned) == (name in WARNED), warned  # once per folder, and only for a folder without a record


def test_swapped_classes_are_caught_whatever_loads_the_folder(runs, tmp_path):
    from dermkit.models.encoders import load_encoder

    folder = _copy(runs["finished"] / "model", tmp_path, "model")
    _edit(classes=_swap)(folder)
    for load in (dermkit.load_predictor, load_encoder):  # the API, and the folder as an image encoder
        with pytest.raises(ModelError, match="'classes' does not match the integrity record"):
            load(folder)


def test_a_folder_without_record_loads_with_a_warning_and_saving_adds_one(runs, tmp_path):
    sealed = runs["finished"] / "model"
    legacy = _copy(sealed, tmp_path, "legacy")
    _legacy()(legacy)
    with pytest.warns(UserWarning, match="older dermkit .* without an integrity record"):
        old = dermkit.load_predictor(legacy)
    paths = [runs["image"]]
    np.testing.assert_allclose(old.predict_paths(paths), dermkit.load_predictor(sealed).predict_paths(paths),
                               atol=1e-6)
    old.save(tmp_path / "resaved")  # save -> load: the record is back, the outputs the same
    card = _card(tmp_path / "resaved")
    assert card["format_version"] == 2 and card["integrity"]["weights"] == _card(sealed)["integrity"]["weights"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = dermkit.load_predictor(tmp_path / "resaved")
    assert not [w for w in caught if "integrity record" in str(w.message)]
    np.testing.assert_allclose(again.predict_paths(paths), old.predict_paths(paths), atol=1e-6)


def test_sealed_fields_and_relocatable_ones(runs, tmp_path):
    card = _card(runs["finished"] / "model")
    record = card["integrity"]
    assert {"classes", "method", "image_size", "model", "mean", "std", "tta", "train_config"} <= set(record["fields"])
    assert not {"integrity", "format", "format_version"} & set(record["fields"])
    assert len(record["weights"]) == 64
    digest = hashlib.sha256((runs["finished"] / "model" / "model.safetensors").read_bytes()).hexdigest()
    assert record["weights"] == digest  # the record is the file's SHA-256
    # A field that names where an outside base model lives may move (its own fingerprint is checked).
    folder = _copy(runs["finished"] / "model", tmp_path, "model")
    _edit(base_model="/elsewhere/clip")(folder)
    assert dermkit.load_predictor(folder).classes == card["classes"]


def test_torch_load_errors_are_summarised():
    import torch

    from dermkit.models.integrity import state_dict_problem

    try:
        torch.nn.Linear(4, 3).load_state_dict({"weight": torch.zeros(2, 4), "bias": torch.zeros(2), "extra": 1})
    except RuntimeError as exc:
        text = state_dict_problem(exc)
    assert text.startswith("weight has shape (2, 4) in the weights file but (3, 4)")
    assert "(and 1 more tensors)" in text and "the file has tensors the model lacks: extra" in text
    assert "size mismatch for" not in text


def test_head_weights_that_do_not_fit_the_class_list_are_refused():
    from dermkit.models.linear import LinearProbe

    with pytest.raises(ModelError, match="2 outputs but 3 class names"):
        LinearProbe(["a", "b", "c"], np.zeros((2, 4)), np.zeros(2), np.zeros(4), np.ones(4), 1.0)


def test_a_suite_does_not_resume_an_edited_config(runs, tmp_path, capsys):
    run = _copy(runs["killed"], tmp_path / "suite", "killed")  # an interrupted run of the suite
    before = _hashes(tmp_path / "suite")
    config = _edited_yaml(run, tmp_path, name="killed", **{"engine.lr": 1.5})
    assert main(["suite", config, "--out", str(tmp_path / "suite")]) == 2
    text = " ".join(capsys.readouterr().err.split())
    assert "engine.lr 0.003 -> 1.5" in text and "--rerun starts killed over" in text and "Traceback" not in text
    assert _hashes(tmp_path / "suite") == before
