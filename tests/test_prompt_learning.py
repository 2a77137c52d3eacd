"""Prompt learning (CoOp / KgCoOp / CgCoOp + IFT) on tiny open_clip models built here.

Known answers: learned prompts initialised from a phrase reproduce ``encode_text`` of that
phrase; prefix + tail reproduce ``encode_image``; cached and uncached training give the same
model; the saved folder predicts like the trained model and refuses a changed base model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import CLIP_CFG, CLIP_PREPROCESS
from dermkit.engine.loop import EngineConfig
from dermkit.errors import ConfigError, ModelError
from dermkit.experiment import run_experiment
from dermkit.methods import load_predictor
from dermkit.methods.prompt_learning import (
    ImageTail,
    PromptConfig,
    PromptModel,
    clinical_prompts,
    guidance_loss,
)
from dermkit.models.encoders import load_encoder, save_open_clip_folder


def train_prompts(config: PromptConfig, out, resume: bool = False, progress: bool = False) -> dict:
    return run_experiment({"method": "prompt_learning", **config.to_dict()}, out, resume=resume, progress=progress)

CLINICAL = {"classes": {
    "other": ["a bluish or reddish lesion.", "a benign lesion with regular colour."],
    "mel": ["a greenish lesion.", "a melanoma with an atypical network."],
    "bcc": ["a reddish lesion."], "nv": ["a bluish lesion."],
}}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def avg_clip_folder(tmp_path_factory):
    """A tiny ViT CLIP with average pooling (all tokens enter ln_post: the full-token cache)."""
    import open_clip

    cfg = json.loads(json.dumps(CLIP_CFG))
    cfg["vision_cfg"]["pool_type"] = "avg"
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("avg") / "avg-clip"
    save_open_clip_folder(open_clip.CLIP(**cfg), folder, cfg, CLIP_PREPROCESS)
    return folder


@pytest.fixture(scope="module")
def dermkit_clip_folder(tmp_path_factory):
    """dermkit-CLIP's architecture (timm EfficientNet-Lite0 + MiniLM text tower), random weights."""
    from dermkit.models.dermkit_clip import build_dermkit_clip

    torch.manual_seed(0)
    model, model_cfg, preprocess_cfg = build_dermkit_clip(pretrained=False, embed_dim=16)
    model_cfg["vision_cfg"]["image_size"] = preprocess_cfg["size"] = 64
    folder = tmp_path_factory.mktemp("dk") / "dermkit-clip"
    save_open_clip_folder(model, folder, model_cfg, preprocess_cfg)
    return folder


def _config(model, tmp_path=None, **kw) -> PromptConfig:
    base = dict(data="tiny", task="binary:mel", model=str(model), n_ctx=4, ctx_init="a photo of a", num_workers=0,
                batch_size=8, n_bootstrap=50, variant="coop",
                engine=EngineConfig(epochs=2, lr=5e-3, precision="fp32", warmup_epochs=0, channels_last=False,
                                    select_metric="balanced_accuracy"))
    base.update(kw)
    return PromptConfig(**base)


@pytest.mark.parametrize("fixture", ["clip_folder", "dermkit_clip_folder"])
def test_prompts_from_a_phrase_reproduce_encode_text(fixture, request):
    enc = load_encoder(request.getfixturevalue(fixture))
    model = PromptModel(enc, ["melanoma", "benign nevus"], _config(enc.source))
    assert model.prompter.n_ctx == 4
    with torch.no_grad():
        ours = model.prompter()
        ref = enc.encode_text(enc.tokenize(["a photo of a melanoma.", "a photo of a benign nevus."]), normalize=False)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    # What is learned and saved: the context (+ the tail with IFT), never the frozen towers.
    assert {k for k in model.state_dict() if not k.startswith("image_tail.")} == {"prompter.ctx", "logit_scale"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "prompter.ctx" in trainable and all(n.startswith(("prompter.", "image_tail.")) for n in trainable)


def test_class_specific_and_random_context_shapes(clip_folder):
    enc = load_encoder(clip_folder)
    csc = PromptModel(enc, ["a", "b", "c"], _config(clip_folder, ctx_init=None, n_ctx=3, class_specific=True))
    assert tuple(csc.prompter.ctx.shape) == (3, 3, 32)
    assert csc.text_features().shape == (3, 16)


@pytest.mark.parametrize("fixture", ["clip_folder", "avg_clip_folder", "dermkit_clip_folder"])
def test_prefix_then_tail_equals_the_image_tower(fixture, request):
    enc = load_encoder(request.getfixturevalue(fixture))
    size = enc.image_size
    pixels = torch.randn(3, 3, size, size)
    tail = ImageTail(enc, trainable=True, units=1)
    with torch.no_grad():
        cached = tail.prefix(pixels)
        torch.testing.assert_close(tail(cached), enc.encode_image(pixels, normalize=False), atol=1e-5, rtol=1e-4)
    if fixture == "clip_folder":
        assert tail.description == "visual.ln_post + visual.proj" and cached.ndim == 2  # CLS token only
    if fixture == "avg_clip_folder":
        assert cached.ndim == 3  # every token, because ln_post comes before the average
    if fixture == "dermkit_clip_folder":
        assert "BatchNormAct2d" in tail.description and cached.ndim == 4
    frozen = ImageTail(enc, trainable=False)
    assert not list(frozen.parameters())
    torch.testing.assert_close(frozen(frozen.prefix(pixels)), enc.encode_image(pixels, normalize=False))


def test_guidance_losses_known_values():
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    g = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=-1)
    cos = 1 / np.sqrt(2)
    assert guidance_loss(t, g, "cgcoop").item() == pytest.approx((1 - cos) / 2, rel=1e-6)
    assert guidance_loss(t, g, "kgcoop").item() == pytest.approx((2 - 2 * cos) / 2, rel=1e-6)  # |a-b|^2 = 2 - 2cos


def test_clinical_prompts_file_and_errors(tmp_path):
    packaged = clinical_prompts(["other", "melanoma"])
    assert any("blue-whitish veil" in s for s in packaged["melanoma"])
    with pytest.raises(ConfigError, match="no clinical prompts for \\['bcc'\\]"):
        clinical_prompts(["bcc"])
    with pytest.raises(ConfigError, match="not found"):
        clinical_prompts(["mel"], tmp_path / "nope.yaml")


def _clinical_file(tmp_path):
    path = tmp_path / "clinical.yaml"
    path.write_text(yaml.safe_dump(CLINICAL))
    return str(path)


def test_cached_and_uncached_training_give_the_same_model(clip_folder, tiny_dataset, tmp_path):
    results = {}
    for cache in (True, False):
        cfg = _config(clip_folder, data=str(tiny_dataset), variant="cgcoop", ift=True, cache=cache,
                      clinical_prompts=_clinical_file(tmp_path))
        summary = train_prompts(cfg, tmp_path / f"cache_{cache}", progress=False)
        pred = load_predictor(tmp_path / f"cache_{cache}" / "model")
        results[cache] = (summary, pred.predict_paths(sorted(tiny_dataset.glob("images/*test*.jpg"))))
        from dermkit.models.checkpoint import load_tensors
        results[cache] += (load_tensors(tmp_path / f"cache_{cache}" / "model" / "model.safetensors"),)
    (s1, p1, w1), (s0, p0, w0) = results[True], results[False]
    assert set(w1) == set(w0)
    for key in w1:
        torch.testing.assert_close(w1[key], w0[key], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(p1, p0, atol=1e-5)
    assert s1["test"]["accuracy"] == pytest.approx(s0["test"]["accuracy"])
    assert s1["image_tail"] == "visual.ln_post + visual.proj"


def test_end_to_end_run_predict_evaluate_and_transfer(clip_folder, tiny_dataset, tmp_path, capsys):
    from dermkit.cli import main
    from dermkit.experiment import run_suite

    clinical = _clinical_file(tmp_path)
    common = {"method": "prompt_learning", "data": str(tiny_dataset), "task": "binary:mel", "model": str(clip_folder),
              "ctx_init": "a photo of a", "num_workers": 0, "batch_size": 8, "n_bootstrap": 50, "epochs": 8,
              "lr": 1e-2, "warmup_epochs": 0, "precision": "fp32", "clinical_prompts": clinical,
              "eval_data": [str(tiny_dataset)]}
    for name, extra in {"full": {"variant": "cgcoop", "ift": True}, "coop": {"variant": "coop", "ift": False},
                        "kg": {"variant": "kgcoop", "ift": False}}.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**common, **extra}))
    configs = [tmp_path / f"{n}.yaml" for n in ("full", "coop", "kg")]
    table = run_suite(configs, tmp_path / "suite", progress=False)
    assert list(table["run"]) == ["full", "full", "coop", "coop", "kg", "kg"]  # each with its transfer row
    assert "->" in table["data"].iloc[1]
    text = (tmp_path / "suite" / "suite.md").read_text()
    assert "| full |" in text and "AUC" in text
    summary = json.loads((tmp_path / "suite" / "full" / "summary.json").read_text())
    # IFT + learned prompts on colour classes: clearly better than chance (binary: 0.5).
    assert summary["test"]["balanced_accuracy"] > 0.7
    assert summary["trainable_parameters"] > json.loads(
        (tmp_path / "suite" / "coop" / "summary.json").read_text())["trainable_parameters"]
    # A finished suite is reused, not retrained.
    mtime = (tmp_path / "suite" / "full" / "summary.json").stat().st_mtime
    run_suite(configs, tmp_path / "suite", progress=False)
    assert (tmp_path / "suite" / "full" / "summary.json").stat().st_mtime == mtime

    # The model folder loads like any other model: load_predictor dispatches on model.json.
    folder = tmp_path / "suite" / "full" / "model"
    card = json.loads((folder / "model.json").read_text())
    assert card["method"] == "prompt_learning" and card["classes"] == ["other", "mel"]
    predictor = load_predictor(folder)
    from dermkit.data import load_card
    preds = predictor.predict_split(load_card(tiny_dataset), "test", progress=False)
    saved = __import__("pandas").read_csv(tmp_path / "suite" / "full" / "eval" / "test" / "predictions.csv")
    np.testing.assert_allclose(preds["prob:mel"].to_numpy(), saved["prob:mel"].to_numpy(), atol=1e-6)
    image = str(sorted(tiny_dataset.glob("images/mel_test_*.jpg"))[0])
    capsys.readouterr()
    assert main(["predict", image, "--model", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {t["class"] for t in out[0]["top"]} == {"other", "mel"}
    assert main(["evaluate", "--model", str(folder), "--data", str(tiny_dataset), "--out", str(tmp_path / "ev"),
                 "--n-bootstrap", "20"]) == 0
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_resume_continues_and_changed_base_is_refused(clip_folder, tiny_dataset, tmp_path):
    import shutil

    cfg = _config(clip_folder, data=str(tiny_dataset), variant="kgcoop", ift=True)
    train_prompts(cfg, tmp_path / "run", progress=False)
    cfg.engine.epochs = 3
    summary = train_prompts(cfg, tmp_path / "run", resume=True, progress=False)
    assert summary["epochs_run"] == 3

    # Learned prompts only fit the base weights they were trained on.
    base = tmp_path / "base"
    shutil.copytree(clip_folder, base)
    card_path = tmp_path / "run" / "model" / "model.json"
    card = json.loads(card_path.read_text())
    card["base_model"] = str(base)
    card_path.write_text(json.dumps(card))
    load_predictor(tmp_path / "run" / "model")  # an identical copy loads
    enc = load_encoder(base)
    with torch.no_grad():
        enc.module.visual.ln_post.weight.add_(1.0)
    save_open_clip_folder(enc.module, base, enc.model_cfg, enc.preprocess_cfg)
    with pytest.raises(ModelError, match="has changed"):
        load_predictor(tmp_path / "run" / "model")
    card["base_model"] = str(tmp_path / "gone")
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="Put the base model back"):
        load_predictor(tmp_path / "run" / "model")


def test_config_errors(clip_folder, tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="variant"):
        train_prompts(_config(clip_folder, data=str(tiny_dataset), variant="maple"), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="unknown key"):
        PromptConfig.from_dict({"n_context": 4})
    with pytest.raises(ConfigError, match="is not a class"):
        train_prompts(_config(clip_folder, data=str(tiny_dataset), task="binary:melanoma"), tmp_path / "y",
                      progress=False)
    with pytest.raises(ModelError, match="text encoder"):
        train_prompts(_config("timm:tf_efficientnet_lite0@random", data=str(tiny_dataset)), tmp_path / "z",
                      progress=False)
