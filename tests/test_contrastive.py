"""Contrastive alignment of dermkit-CLIP on the tiny dataset: runs through the one engine, saves a
model that the registry loads, and the loss treats identical captions as positives."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dermkit.engine.losses import soft_clip_loss
from dermkit.experiment import run_experiment


def test_soft_clip_loss_matches_clip_loss_for_distinct_captions():
    torch.manual_seed(0)
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    scale = torch.tensor(10.0)
    ours = soft_clip_loss(img, txt, scale, torch.arange(5))
    logits = scale * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    labels = torch.arange(5)
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                  + torch.nn.functional.cross_entropy(logits.T, labels))
    assert ours.item() == pytest.approx(clip.item(), rel=1e-6)


def test_identical_captions_are_not_negatives():
    # Rows 0 and 1 carry the same caption: each is a positive of the other (target mass split).
    torch.manual_seed(1)
    img, txt = torch.randn(3, 4), torch.randn(3, 4)
    scale = torch.tensor(5.0)
    logits = scale * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = 0.5 * (-(targets * logits.log_softmax(1)).sum(1).mean()
                      - (targets * logits.T.log_softmax(1)).sum(1).mean())
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
    loaded = dermkit.load_predictor(out / "model")
    preds = loaded.predict_split(tiny_dataset, "test", progress=False)
    assert len(preds) == 18 and summary["test"]["macro_auc"] is not None
    # Its OOD detector attaches: the tiny tower maps one probe image to zero features, in both passes.
    assert loaded.ood is not None and loaded.ood_note == ""


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


def test_hard_negatives_are_extra_image_to_text_columns():
    # Image-to-text: each image picks its caption among 3 captions + 3 negatives; a negative whose
    # text equals an image's caption (id 3 below) is that image's positive. Text-to-image: unchanged.
    torch.manual_seed(2)
    img, txt, neg = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    scale = torch.tensor(4.0)
    n = torch.nn.functional.normalize
    logits = scale * n(img, dim=-1) @ n(torch.cat([txt, neg]), dim=-1).T  # 3 x 6
    targets = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0], [0, 0, 0.5, 0, 0, 0.5]])
    i2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    t2i = torch.nn.functional.cross_entropy(logits[:, :3].T, torch.arange(3))
    got = soft_clip_loss(img, txt, scale, torch.tensor([1, 2, 3]), neg, torch.tensor([9, 8, 3]))
    assert got.item() == pytest.approx((0.5 * (i2t + t2i)).item(), rel=1e-6)
    # No negatives: the plain loss.
    assert soft_clip_loss(img, txt, scale, torch.tensor([1, 2, 3])).item() == pytest.approx(
        0.5 * (torch.nn.functional.cross_entropy(logits[:, :3], torch.arange(3)) + t2i).item(), rel=1e-6)


def test_hard_negative_captions_differ_only_in_the_diagnosis(tiny_card):
    from dermkit.data.captions import captions_for_split, captions_with_negatives

    pairs = captions_with_negatives(tiny_card, "train", seed=4)
    assert [c for c, _ in pairs] == captions_for_split(tiny_card, "train", seed=4)  # the captions are unchanged
    rows = tiny_card.rows("train")
    names = {c: tiny_card.class_names[c] for c in tiny_card.classes}
    for (caption, negative), true in zip(pairs, rows["diagnosis"]):
        assert negative is not None and negative != caption
        assert names[true] in caption or any(s in caption for s in tiny_card.synonyms.get(true, []))
        assert names[true] not in negative.replace(caption, "")
        # Removing every class name/synonym leaves the same text: only the diagnosis differs.
        def strip(text):
            for cls in tiny_card.classes:
                for word in sorted([names[cls], *tiny_card.synonyms.get(cls, [])], key=len, reverse=True):
                    text = text.replace(word, "#").replace(word.capitalize(), "#")
            return text
        assert strip(caption).replace("(#)", "").replace(" ", "") == strip(negative).replace("(#)", "").replace(" ", "")


def test_class_balanced_pair_weights(tiny_dataset):
    from dermkit.data.pairs import PairSource

    source = PairSource([str(tiny_dataset)], "train")
    groups, counts = np.unique(source.groups, return_counts=True)
    w = source.weights(1.0)
    # power 1: every class equally likely; power 0: every pair equally likely.
    per_class = {g: w[source.groups == g].sum() for g in groups}
    assert all(v == pytest.approx(1 / len(groups)) for v in per_class.values())
    assert np.allclose(source.weights(0.0), 1 / len(source.groups))
    half = source.weights(0.5)
    expected = counts ** 0.5 / (counts ** 0.5).sum()
    assert [half[source.groups == g].sum() for g in groups] == pytest.approx(list(expected))
    order = source.order(7, 1.0)
    assert len(order) == len(source.paths) and np.array_equal(order, source.order(7, 1.0))


def test_trunk_split_reproduces_encode_image():
    from dermkit.methods.contrastive import set_trainable
    from dermkit.models.dermkit_clip import build_dermkit_clip
    from dermkit.models.frozen_prefix import trunk_split

    torch.manual_seed(0)
    model, _, _ = build_dermkit_clip(pretrained=False, embed_dim=16)
    _, frozen = set_trainable(model, 4, 1)
    prefix, tail = trunk_split(model, frozen)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    cached = prefix(x)
    # stride 16: what enters the last 4 units (2 stages + head)
    assert not cached.requires_grad and cached.shape[-1] == 4
    with torch.no_grad():
        torch.testing.assert_close(tail(cached), model.encode_image(x), atol=1e-5, rtol=1e-5)
    # Gradients reach the trained tail only.
    tail(cached).sum().backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert model.visual.head.proj.weight.grad is not None


def test_text_split_reproduces_encode_text():
    import open_clip

    from dermkit.methods.contrastive import set_trainable, trim_padding
    from dermkit.models.dermkit_clip import build_dermkit_clip, minilm_folder
    from dermkit.models.frozen_prefix import text_split

    torch.manual_seed(0)
    model, _, _ = build_dermkit_clip(pretrained=False, embed_dim=16)
    set_trainable(model, 4, 2)
    model.eval()
    tokenizer = open_clip.tokenizer.HFTokenizer(str(minilm_folder()), context_length=128)
    tokens = trim_padding(tokenizer(["melanoma on the back of a 60-year-old man, it has grown", "a nevus", "bcc"]),
                          model.text.config.pad_token_id)
    prefix, tail = text_split(model, 2)
    hidden, mask = prefix(tokens)
    lengths = mask.sum(1).tolist()
    assert not hidden.requires_grad and lengths[0] == mask.shape[1] > lengths[1] > lengths[2]  # two rows padded
    with torch.no_grad():
        torch.testing.assert_close(tail(hidden, mask), model.encode_text(tokens), atol=1e-5, rtol=1e-5)
        # What sits at padded positions never matters (the cache stores real tokens only).
        noisy = torch.where(mask[..., None].bool(), hidden, torch.randn_like(hidden))
        torch.testing.assert_close(tail(noisy, mask), model.encode_text(tokens), atol=1e-5, rtol=1e-5)
    tail(hidden, mask).sum().backward()
    layers = model.text.transformer.encoder.layer
    assert all(p.grad is None for p in layers[0].parameters())
    assert all(p.grad is not None for p in layers[-1].parameters())


def test_text_groups_give_the_embeddings_of_one_padded_batch():
    """The trained text layers on length groups, rows put back in place, equal one padded batch
    (forward and the gradients they send back)."""
    import open_clip

    from dermkit.data.pairs import MemoryPairs
    from dermkit.methods.contrastive import set_trainable, trim_padding
    from dermkit.models.dermkit_clip import build_dermkit_clip, minilm_folder
    from dermkit.models.frozen_prefix import text_split

    torch.manual_seed(0)
    model, _, _ = build_dermkit_clip(pretrained=False, embed_dim=16)
    set_trainable(model, 4, 2)
    model.eval()
    tokenizer = open_clip.tokenizer.HFTokenizer(str(minilm_folder()), context_length=128)
    texts = ["melanoma on the back of a 60-year-old man, it has grown over the last months", "a nevus", "bcc",
             "seborrhoeic keratosis on the face", "a", "dermoscopic image of a benign nevus on the trunk of a woman"]
    prefix, tail = text_split(model, 2)
    hidden, mask = prefix(trim_padding(tokenizer(texts), model.text.config.pad_token_id))
    pairs = MemoryPairs.__new__(MemoryPairs)  # only its text table: no dataset needed
    pairs.text_table = {t: h[: int(n)].clone() for t, h, n in zip(texts, hidden, mask.sum(1).tolist())}
    batch = [texts[i] for i in (3, 0, 4, 1, 5, 2, 0)]  # a repeated text and lengths out of order
    h, m = pairs.text_inputs(batch)
    whole = tail(h, m)
    for groups in (2, 3, 7, 20):
        parts = pairs.text_groups(batch, groups)
        assert len(parts) == min(groups, len(batch))
        assert sorted(torch.cat([p for p, _, _ in parts]).tolist()) == list(range(len(batch)))
        assert sum(hh.shape[0] * hh.shape[1] for _, hh, _ in parts) < h.shape[0] * h.shape[1]  # less padding
        emb = torch.cat([tail(hh, mm) for _, hh, mm in parts])
        emb = emb[torch.argsort(torch.cat([p for p, _, _ in parts]))]
        torch.testing.assert_close(emb, whole, atol=1e-5, rtol=1e-5)
        weight = model.text.transformer.encoder.layer[-1].output.dense.weight
        grad_whole = torch.autograd.grad((whole * torch.arange(16.0)).sum(), weight, retain_graph=True)[0]
        grad_groups = torch.autograd.grad((emb * torch.arange(16.0)).sum(), weight)[0]
        torch.testing.assert_close(grad_groups, grad_whole, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("text_cache", [{"cache_captions": 2}, {"cache_captions": "epoch", "text_groups": 3}],
                         ids=["two-draws", "per-epoch-grouped"])
def test_cached_balanced_hard_negative_training_resumes_exactly(tiny_dataset, tmp_path, text_cache):
    from conftest import killed_after_first_checkpoint
    from dermkit.models.encoders import load_encoder

    cfg = {"method": "contrastive", "train_data": [str(tiny_dataset)], "data": str(tiny_dataset), "eval_data": [],
           "image_size": 32, "batch_size": 16, "num_workers": 0, "val_per_dataset": 18, "train_image_last": 3,
           "train_text_last": 1, "n_bootstrap": 20, "cache_views": 2, "class_balance": 1.0, "hard_negatives": True,
           **text_cache, "text_dropout": 0.0,
           "engine": {"epochs": 2, "lr": 1e-3, "precision": "fp32", "warmup_epochs": 0.5,
                      "select_metric": "zeroshot_balanced_accuracy"}}
    straight = run_experiment(cfg, tmp_path / "a", progress=False)
    assert straight["epochs_run"] == 2
    with killed_after_first_checkpoint(), pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "b", progress=False)
    run_experiment(cfg, tmp_path / "b", resume=True, progress=False)
    a = json.loads((tmp_path / "a/checkpoints/last.json").read_text())["loop"]["history"]
    b = json.loads((tmp_path / "b/checkpoints/last.json").read_text())["loop"]["history"]
    assert [h["train_loss"] for h in a] == pytest.approx([h["train_loss"] for h in b], rel=1e-6)
    wa = load_encoder(tmp_path / "a/model").module.state_dict()
    wb = load_encoder(tmp_path / "b/model").module.state_dict()
    for key, value in wa.items():
        torch.testing.assert_close(wb[key], value, rtol=0, atol=1e-6)
    # The frozen trunk and its BatchNorm statistics are untouched; the tail learned.
    init = load_encoder(tmp_path / "a/init").module.state_dict()
    for key in init:
        if key.startswith(("visual.trunk.conv_stem", "visual.trunk.bn1.", "visual.trunk.blocks.0.")):
            assert torch.equal(init[key], wa[key]), key
    assert any(not torch.equal(init[k], wa[k]) for k in init if k.startswith("visual.head"))


def test_per_epoch_caption_cache_trains_like_a_cache_of_every_draw(tiny_dataset, tmp_path):
    """cache_captions: epoch (built lazily, one draw in memory) gives the run that K = epochs
    draws built up front gives: the same caption draw per epoch, the same states."""
    cfg = {"method": "contrastive", "train_data": [str(tiny_dataset)], "data": str(tiny_dataset), "eval_data": [],
           "image_size": 32, "batch_size": 16, "num_workers": 0, "val_per_dataset": 18, "train_image_last": 3,
           "train_text_last": 1, "n_bootstrap": 20, "hard_negatives": True, "text_dropout": 0.0,
           "engine": {"epochs": 2, "lr": 1e-3, "precision": "fp32", "warmup_epochs": 0.5,
                      "select_metric": "zeroshot_balanced_accuracy"}}
    histories = []
    for name, cache in (("draws", 2), ("epoch", "epoch")):
        run_experiment({**cfg, "cache_captions": cache}, tmp_path / name, progress=False)
        histories.append(json.loads((tmp_path / name / "checkpoints/last.json").read_text())["loop"]["history"])
    assert [h["train_loss"] for h in histories[1]] == pytest.approx([h["train_loss"] for h in histories[0]], rel=1e-6)


@pytest.mark.parametrize("bad, match", [({"cache_views": -1}, "cache_views"), ({"class_balance": 2}, "class_balance"),
                                        ({"cache_views": 2, "train_image_last": None}, "train_image_last"),
                                        ({"cache_captions": 2, "train_text_last": None}, "train_text_last"),
                                        ({"cache_captions": -1}, "cache_captions"),
                                        ({"cache_captions": "always"}, "cache_captions must be a whole number"),
                                        ({"text_groups": 0}, "text_groups must be"),
                                        ({"text_groups": 4}, "set cache_captions"),
                                        ({"text_dropout": 1.0}, "text_dropout"),
                                        ({"hard_negatives": True, "shards": ["x/{0..1}.tar"]}, "shards")])
def test_bad_clip_levers_are_refused(bad, match):
    from dermkit.errors import ConfigError
    from dermkit.methods.contrastive import ClipTrainConfig

    with pytest.raises(ConfigError, match=match):
        ClipTrainConfig.from_dict({"train_data": ["ham10000"], **bad}).validate()
