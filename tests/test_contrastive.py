"""Contrastive alignment of dermkit-CLIP on the tiny dataset: runs through the one engine, saves a
model that the registry loads, and the loss treats identical captions as positives."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dermkit.experiment import run_experiment
from dermkit.methods.contrastive import soft_clip_loss


def test_soft_clip_loss_matches_clip_loss_for_distinct_captions():
    torch.manual_seed(0)
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    scale = torch.tensor(10.0)
    ours = soft_clip_loss(img, txt, scale, torch.arange(5))
    logits = scale * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    labels = torch.arange(5)
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels))
    assert ours.item() == pytest.approx(clip.item(), rel=1e-6)


def test_identical_captions_are_not_negatives():
    # Rows 0 and 1 carry the same caption: each is a positive of the other (target mass split).
    torch.manual_seed(1)
    img, txt = torch.randn(3, 4), torch.randn(3, 4)
    scale = torch.tensor(5.0)
    logits = scale * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = 0.5 * (-(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.T.log_softmax(1)).sum(1).mean())
    got = soft_clip_loss(img, txt, scale, torch.tensor([7, 7, 3]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_clip_train_tiny_end_to_end(tiny_dataset, tmp_path):
    import dermkit
    from dermkit.models.encoders import load_encoder

    cfg = {"method": "contrastive", "train_data": [str(tiny_dataset)], "data": str(tiny_dataset), "eval_data": [],
           "image_size": 32, "batch_size": 16, "num_workers": 0, "val_per_dataset": 18, "train_image_last": 2,
           "train_text_last": 1, "n_bootstrap": 20,
           "engine": {"epochs": 2, "lr": 1e-3, "precision": "fp32", "warmup_epochs": 0.5,
                      "select_metric": "zeroshot_balanced_accuracy"}}
    out = tmp_path / "clip"
    summary = run_experiment(cfg, out, progress=False)
    assert summary["epochs_run"] == 2 and summary["pairs"] == 48
    assert (out / "model" / "open_clip_config.json").is_file()
    assert (out / "model" / "open_clip_model.safetensors").is_file()
    history = json.loads((out / "checkpoints" / "last.json").read_text())["loop"]["history"]
    assert all(math.isfinite(h["train_loss"]) for h in history)
    # Only the named tails learned: the stem of the image trunk is unchanged.
    init = load_encoder(out / "init").module.state_dict()
    final = load_encoder(out / "model").module.state_dict()
    stem = [k for k in init if "conv_stem" in k][0]
    assert torch.equal(init[stem], final[stem])
    assert any(not torch.equal(init[k], final[k]) for k in init if k.startswith("visual.head"))
    # The saved model is a normal registry model, and its folder is also a zero-shot classifier.
    assert load_encoder(out / "model").has_text
    preds = dermkit.load_predictor(out / "model").predict_split(tiny_dataset, "test", progress=False)
    assert len(preds) == 18 and summary["test"]["macro_auc"] is not None


def test_trimming_padding_keeps_text_embeddings(tmp_path):
    from dermkit.methods.contrastive import trim_padding
    from dermkit.models.dermkit_clip import build_dermkit_clip

    torch.manual_seed(0)
    model, _, _ = build_dermkit_clip(pretrained=False, embed_dim=16)
    import open_clip

    from dermkit.models.dermkit_clip import minilm_folder

    tokenizer = open_clip.tokenizer.HFTokenizer(str(minilm_folder()), context_length=128)
    tokens = tokenizer(["melanoma on the back", "a nevus"])
    trimmed = trim_padding(tokens, model.text.config.pad_token_id)
    assert trimmed.shape[1] < 16
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), model.encode_text(trimmed), atol=1e-5, rtol=1e-5)
