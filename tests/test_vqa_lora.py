"""LoRA fine-tuning of a generative VLM (`dermkit vqa lora`, method vqa with lora: true) on the tiny
random LLaVA: the loss falls, checkpoints hold only the adapter, resume is exact, the adapter reloads
(RUN/adapter with `vqa run --adapter`, RUN/model with load_predictor) to identical outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import dermkit
from conftest import killed_after_first_checkpoint
from dermkit.cli import main
from dermkit.models.checkpoint import load_tensors

TEMPLATE = "what is the lesion type ? choose one of : {options} ."


def _lora(vlm, data, out, *extra):
    return ["vqa", "lora", "--model", str(vlm), "--data", str(data), "--out", str(out), "--template", TEMPLATE,
            "--rank", "4", "--lr", "5e-3", "--batch-size", "4", "--n-bootstrap", "10", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def lora_run(vlm_folder, tmp_path_factory):
    from conftest import make_dataset

    root = tmp_path_factory.mktemp("lora")
    data = make_dataset(root)
    out = root / "run"
    assert main(_lora(vlm_folder, data, out, "--epochs", "3")) == 0
    return {"data": data, "run": out, "vlm": vlm_folder}


def test_loss_falls_and_files_are_written(lora_run):
    run = lora_run["run"]
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 3
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_loss"].min() < history["val_loss"].iloc[0] or history["val_loss"].iloc[0] < np.log(4)
    # The instruction file is LLaVA's conversation format, one line per train image.
    line = json.loads((run / "instructions_train.jsonl").read_text().splitlines()[0])
    assert line["conversations"][0]["value"].startswith("<image>\n") and line["conversations"][1]["value"] in \
        ("bcc", "mel", "nv")
    assert ((run / "adapter" / "adapter_model.safetensors").is_file()
            and (run / "adapter" / "adapter_config.json").is_file())
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))
    # A checkpoint holds the adapter only, not the frozen base model.
    ckpt = load_tensors(run / "checkpoints" / "last.safetensors")
    model_keys = [k for k in ckpt if k.startswith("model.")]
    assert model_keys and all("lora_" in k for k in model_keys)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "vqa" and summary["trainable_parameters"] > 0
    assert 0 <= summary["test"]["macro_auc"] <= 1


def test_the_adapter_changes_the_model_and_reloads_to_identical_outputs(lora_run, tmp_path):
    from dermkit.api import load_dataset
    from dermkit.data.images import open_image
    from dermkit.models.generative import load_generative, option_probabilities

    card = load_dataset(lora_run["data"])
    image = open_image(card.image_path(card.rows("test")["image"].iloc[0]))
    question = TEMPLATE.format(options="bcc, mel, nv")
    options = ["bcc", "mel", "nv"]
    base, processor = load_generative(lora_run["vlm"])
    tuned, _ = load_generative(lora_run["vlm"], adapter=lora_run["run"] / "adapter")
    p_base = option_probabilities(base, processor, image, question, options)
    p_tuned = option_probabilities(tuned, processor, image, question, options)
    assert np.abs(p_base - p_tuned).max() > 1e-4  # the adapter is applied
    # The run's model folder (method vqa) gives the same probabilities through the Predictor...
    predictor = dermkit.load_predictor(lora_run["run"] / "model")
    np.testing.assert_allclose(predictor.predict_paths([card.image_path(card.rows("test")["image"].iloc[0])])[0],
                               p_tuned, atol=1e-6)
    # ... and `vqa run --adapter RUN` (the run folder resolves to RUN/adapter) writes them.
    q, a = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    assert main(["vqa", "questions", "--data", str(lora_run["data"]), "--out", str(q), "--template", TEMPLATE]) == 0
    q.write_text(q.read_text().splitlines()[0] + "\n")
    assert main(["vqa", "run", "--model", str(lora_run["vlm"]), "--questions", str(q), "--data", str(lora_run["data"]),
                 "--out", str(a), "--mode", "options", "--adapter", str(lora_run["run"])]) == 0
    probs = json.loads(a.read_text())["probs"]
    np.testing.assert_allclose([probs[c] for c in options], p_tuned, atol=1e-6)


def test_resume_is_exact(vlm_folder, tiny_dataset, tmp_path, monkeypatch):

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(_lora(vlm_folder, tiny_dataset, straight, "--epochs", "2")) == 0
    with killed_after_first_checkpoint():
        assert main(_lora(vlm_folder, tiny_dataset, split, "--epochs", "2")) == 130
    assert json.loads((split / "checkpoints/last.json").read_text())["loop"]["epoch"] == 1
    assert main(_lora(vlm_folder, tiny_dataset, split, "--epochs", "2", "--resume")) == 0
    a = load_tensors(straight / "checkpoints/last.safetensors")
    b = load_tensors(split / "checkpoints/last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_changed_base_model_is_refused(lora_run, tmp_path):
    import shutil

    copy = tmp_path / "llava"
    shutil.copytree(lora_run["vlm"], copy)
    run = tmp_path / "run"
    shutil.copytree(lora_run["run"], run)
    card = json.loads((run / "model" / "model.json").read_text())
    card["base_model"] = str(copy)
    (run / "model" / "model.json").write_text(json.dumps(card))
    assert dermkit.load_predictor(run / "model").classes == ["bcc", "mel", "nv"]  # an identical copy loads
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(config))
    from dermkit.errors import ModelError

    with pytest.raises(ModelError, match="has changed"):
        dermkit.load_predictor(run / "model")


def test_bad_lora_input_is_refused(vlm_folder, tiny_dataset, tmp_path, capsys):
    assert main(_lora(vlm_folder, tiny_dataset, tmp_path / "out", "--targets", "nothing_like_this")) == 2
    assert "lora_targets" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model").exists()
    q = tmp_path / "q.jsonl"
    assert main(["vqa", "questions", "--data", str(tiny_dataset), "--out", str(q)]) == 0
    assert main(["vqa", "run", "--model", str(vlm_folder), "--questions", str(q), "--data", str(tiny_dataset),
                 "--out", str(tmp_path / "a.jsonl"), "--adapter", str(tmp_path)]) == 2
    assert "no LoRA adapter" in capsys.readouterr().err
    assert not (tmp_path / "a.jsonl").exists()


def test_memory_estimate_counts_parameters_without_loading(vlm_folder, capsys):
    from transformers import AutoModelForImageTextToText

    from dermkit.models.generative import memory_estimate

    real = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(str(vlm_folder)).parameters())
    est = memory_estimate(vlm_folder, dtype_bytes=2, lora_rank=4)
    assert est["parameters"] == real
    assert est["weights_gib"] == pytest.approx(real * 2 / 2**30)
    # 2 layers x (q,k,v,o: 32->32; gate, up: 32->37; down: 37->32) x rank 4 x (in + out)
    assert est["lora_parameters"] == 2 * 4 * (4 * 64 + 3 * 69)
    assert main(["vqa", "estimate", "--model", str(vlm_folder)]) == 0
    assert "parameters" in capsys.readouterr().out
