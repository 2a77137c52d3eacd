"""A folder with PanDerm-2's own open_clip config loads with stock open_clip: zero-shot and `dermkit rank` run on it.

PanDerm-2 was trained with a fork of open_clip whose model config
(``src/open_clip/model_configs/PanDerm-large-w-PubMed-256.json`` in the SiyuanYan1 repositories)
carries a fork-only key, ``vision_cfg.pretrain_path``. Stock open_clip rejects it
(``CLIPVisionCfg.__init__() got an unexpected keyword argument 'pretrain_path'``); dermkit drops it
with a warning. The folder here is random-weight: the exact ViT-B/16 vision config, the text tower
pointed at a tiny BERT folder built in the test (PubMedBERT itself is not needed to test loading).
One ViT-B/16 is built and saved (~350 MB in tmp_path) per module.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermkit.errors import ModelError
from dermkit.models.encoders import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, load_encoder, save_open_clip_folder

# PanDerm-large-w-PubMed-256.json, verbatim (the text model names are replaced per test below).
PANDERM2_CONFIG = {
    "embed_dim": 768,
    "vision_cfg": {
        "image_size": 224,
        "layers": 12,
        "width": 768,
        "patch_size": 16,
        "pretrain_path": None,
    },
    "text_cfg": {
        "context_length": 256,
        "hf_model_name": "neuml/pubmedbert-base-embeddings",
        "hf_tokenizer_name": "neuml/pubmedbert-base-embeddings",
        "hf_pooler_type": "mean_pooler",
    },
}
WORDS = ("a an the of with dermoscopic clinical image photo lesion skin melanoma nevus benign malignant "
         "basal cell carcinoma")
TEXTS = ["a dermoscopic image of melanoma", "a dermoscopic image of a benign nevus"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_bert(folder: Path) -> Path:
    """A BERT-style text model folder: tiny config.json + weights, and a tokenizer from a small vocab.txt."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split()]) + "\n")
    BertTokenizer(vocab=str(vocab)).save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(WORDS.split()) + 5, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(str(folder))
    return folder


def _panderm_cfg(text_folder: Path) -> dict:
    cfg = copy.deepcopy(PANDERM2_CONFIG)
    cfg["text_cfg"]["hf_model_name"] = cfg["text_cfg"]["hf_tokenizer_name"] = str(text_folder)
    return cfg


@pytest.fixture(scope="module")
def panderm_folder(tmp_path_factory):
    """(folder, model): a random-weight open_clip folder whose open_clip_config.json is PanDerm-2's."""
    from open_clip import CustomTextCLIP

    root = tmp_path_factory.mktemp("panderm2")
    cfg = _panderm_cfg(_tiny_bert(root / "tiny-pubmedbert"))
    build_cfg = copy.deepcopy(cfg)
    del build_cfg["vision_cfg"]["pretrain_path"]  # what stock open_clip can build
    build_cfg["text_cfg"]["hf_model_pretrained"] = False
    torch.manual_seed(0)
    model = CustomTextCLIP(**build_cfg).eval()
    folder = save_open_clip_folder(model, root / "PanDerm-2-random", cfg)
    saved = json.loads((folder / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    assert saved == cfg  # the fork-only key is in the folder, as in PanDerm-2's own files
    return folder, model


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(180, 240, 3), dtype=np.uint8), "RGB")


def test_panderm2_config_loads_with_a_warning(panderm_folder):
    folder, model = panderm_folder
    with pytest.warns(UserWarning, match=r"pretrain_path") as record:
        enc = load_encoder(folder)
    message = next(str(w.message) for w in record if "pretrain_path" in str(w.message))
    assert "vision_cfg.pretrain_path" in message and str(folder / OPEN_CLIP_CONFIG) in message
    assert enc.has_text and enc.embed_dim == 768 and enc.image_size == 224
    assert "pretrain_path" not in enc.model_cfg["vision_cfg"]  # re-saving gives a stock open_clip config
    assert enc.tokenize(TEXTS).shape == (2, 256)  # PanDerm-2's context length
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(enc.encode_image(x, normalize=False), model.encode_image(x))


def test_panderm2_zero_shot_probabilities(panderm_folder):
    folder, _ = panderm_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = load_encoder(folder)
    pixels = torch.stack([enc.preprocess(_image(seed)) for seed in (0, 1)])
    with torch.no_grad():
        images = enc.encode_image(pixels)
        texts = enc.encode_text(enc.tokenize(TEXTS))
    probs = (enc.logit_scale * images @ texts.T).softmax(dim=-1)
    assert probs.shape == (2, 2) and torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(dim=-1), torch.ones(2), atol=1e-6)


def test_dermkit_rank_on_the_panderm2_folder(panderm_folder, tmp_path, capsys):
    from dermkit.cli import main

    folder, _ = panderm_folder
    image = tmp_path / "lesion.png"
    _image(2).save(image)
    with pytest.warns(UserWarning, match="pretrain_path"):
        code = main(["rank", "--model", str(folder), str(image), "--texts", *TEXTS, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert sorted(r["text"] for r in result) == sorted(TEXTS)
    assert sum(r["probability"] for r in result) == pytest.approx(1, abs=1e-5)


def test_dermkit_zeroshot_on_the_panderm2_folder(panderm_folder, tmp_path, capsys, monkeypatch):
    """`dermkit zeroshot` end to end on the PanDerm-2-configured folder (random weights: no accuracy
    is asserted, only that the seed's model format runs through dermkit's pipeline and reports)."""
    from conftest import make_dataset
    from dermkit.cli import main

    folder, _ = panderm_folder
    data = make_dataset(tmp_path, counts={"train": 2, "val": 2, "test": 3})
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="pretrain_path"):
        code = main(["zeroshot", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "zs"),
                     "--n-bootstrap", "10"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "zs" / "tiny" / "metrics.json").read_text())
    assert metrics["n"] == 9 and (tmp_path / "zs" / "tiny" / "model" / "model.json").is_file()


# ------------------------------------------------------------------------------ build errors say what failed


TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _config_only_folder(folder: Path, model_cfg: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg}))
    (folder / OPEN_CLIP_WEIGHTS).write_bytes(b"")  # never read: building fails first
    return folder


def test_unknown_keys_are_dropped_everywhere(tmp_path):
    import open_clip

    from dermkit.models.checkpoint import save_tensors

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    cfg = copy.deepcopy(TINY_CFG)
    cfg["fork_option"] = 1
    cfg["text_cfg"]["fork_text_option"] = "x"
    folder = _config_only_folder(tmp_path / "m", cfg)
    save_tensors(folder / OPEN_CLIP_WEIGHTS, model.state_dict())
    with pytest.warns(UserWarning, match=r"fork_option, text_cfg\.fork_text_option"):
        enc = load_encoder(folder)
    assert enc.model_cfg == TINY_CFG


def test_build_errors_blame_the_part_that_failed(tmp_path, panderm_folder):
    cfg = copy.deepcopy(TINY_CFG)
    cfg["vision_cfg"]["width"] = 33  # not divisible by the head width
    with pytest.raises(ModelError) as info:
        load_encoder(_config_only_folder(tmp_path / "vision", cfg))
    assert "vision tower (vision_cfg in" in str(info.value) and "text tower" not in str(info.value)

    # PanDerm-2's config with a wrong vision width: the HF text tower is fine, so it is not blamed
    folder, _ = panderm_folder
    text_folder = json.loads((folder / OPEN_CLIP_CONFIG).read_text())["model_cfg"]["text_cfg"]["hf_model_name"]
    cfg = _panderm_cfg(Path(text_folder))
    cfg["vision_cfg"]["width"] = 770
    with pytest.warns(UserWarning, match="pretrain_path"), pytest.raises(ModelError) as info:
        load_encoder(_config_only_folder(tmp_path / "panderm-bad-vision", cfg))
    assert "vision tower" in str(info.value) and "text tower" not in str(info.value)

    # ...while a text model folder that is gone is named, with the fix
    cfg = _panderm_cfg(tmp_path / "no-such-bert")
    with pytest.warns(UserWarning, match="pretrain_path"), pytest.raises(ModelError) as info:
        load_encoder(_config_only_folder(tmp_path / "panderm-no-text", cfg))
    assert "text tower's config.json" in str(info.value) and "no-such-bert" in str(info.value)
