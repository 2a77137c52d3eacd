"""Shared test fixtures: a tiny, valid, learnable dataset folder built in tmp_path.

``make_dataset(folder)`` writes 3 classes x (16 train + 6 val + 6 test) 32x32 JPEGs whose colour
depends on the class (bcc reddish, mel greenish, nv bluish, with pixel noise), a metadata.csv
(image, label, diagnosis, split, lesion_id, age, sex) and a dataset.yaml. Two images of one
lesion always share a split. Use the ``tiny_dataset`` fixture (a Path) or ``tiny_card``.

Real-data tests use ``SHARED_DATA`` / ``requires_shared_data``: they skip when the shared
datasets are not on this machine.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

TINY_CLASSES = ("bcc", "mel", "nv")  # sorted, so label 0/1/2 = red/green/blue
TINY_COLOURS = {"bcc": (200, 60, 60), "mel": (60, 190, 70), "nv": (60, 80, 200)}
TINY_COUNTS = {"train": 16, "val": 6, "test": 6}


_CACHE: dict[tuple, Path] = {}
_CACHE_DIR: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache(tmp_path_factory):
    """One ONNX export per tiny model for the whole session (tests point DERMKIT_CACHE elsewhere)."""
    old = os.environ.get("DERMKIT_ONNX_CACHE")
    os.environ["DERMKIT_ONNX_CACHE"] = str(tmp_path_factory.mktemp("onnx"))
    yield
    if old is None:
        os.environ.pop("DERMKIT_ONNX_CACHE", None)
    else:
        os.environ["DERMKIT_ONNX_CACHE"] = old


def make_dataset(
    tmp_path: str | os.PathLike,
    name: str = "tiny",
    classes=TINY_CLASSES,
    counts: dict | None = None,
    size: int = 32,
    seed: int = 0,
    noise: float = 25.0,
    write_yaml: bool = True,
) -> Path:
    """Write a small valid dataset folder ``tmp_path/name`` and return its path.

    Each class has ``counts[split]`` images per split (default 16/6/6); pixel colour = class
    colour + Gaussian noise (std ``noise``) + a per-image brightness shift, so a linear model on
    mean colour separates the classes but images are not identical. Image *i* and *i+1* of a
    class and split share a ``lesion_id``. Identical requests are generated once per test
    session and copied (encoding the JPEGs dominates the cost).
    """
    key = (name, tuple(classes), tuple((counts or TINY_COUNTS).items()), size, seed, noise, write_yaml)
    if key not in _CACHE:
        if not _CACHE_DIR:
            _CACHE_DIR.append(Path(tempfile.mkdtemp(prefix="dermkit-tiny-")))
            atexit.register(shutil.rmtree, _CACHE_DIR[0], ignore_errors=True)
        _CACHE[key] = _generate(_CACHE_DIR[0] / str(len(_CACHE)), name, classes, counts, size, seed, noise, write_yaml)
    root = Path(tmp_path) / name
    shutil.copytree(_CACHE[key], root, dirs_exist_ok=True)
    return root


def _generate(tmp_path, name, classes, counts, size, seed, noise, write_yaml) -> Path:
    counts = dict(TINY_COUNTS if counts is None else counts)
    root = Path(tmp_path) / name
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = dict(TINY_COLOURS)
    extra = [(200, 200, 60), (200, 60, 200), (60, 200, 200), (120, 120, 120)]
    for i, cls in enumerate(c for c in classes if c not in palette):
        palette[cls] = extra[i % len(extra)]
    rows = []
    for label, cls in enumerate(classes):
        for split, n in counts.items():
            for k in range(n):
                rel = f"images/{cls}_{split}_{k:02d}.jpg"
                base = np.array(palette[cls], dtype=float) + rng.normal(0, 10)
                pixels = base + rng.normal(0, noise, size=(size, size, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(
                    root / rel, "JPEG", quality=90
                )
                rows.append(
                    {
                        "image": rel,
                        "label": label,
                        "diagnosis": cls,
                        "split": split,
                        "lesion_id": f"L_{cls}_{split}_{k // 2:02d}",
                        "age": int(rng.integers(20, 90)),
                        "sex": "female" if rng.random() < 0.5 else "male",
                    }
                )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    if write_yaml:
        card = {
            "name": name,
            "description": "Tiny synthetic test dataset: class = dominant colour.",
            "modality": "dermoscopy",
            "classes": list(classes),
            "class_names": {c: f"{c} lesion" for c in classes},
            "synonyms": {c: [c.upper()] for c in classes},
            "group_column": "lesion_id",
            "metadata_columns": {"age": "numeric", "sex": "categorical"},
            "positive_class": "mel" if "mel" in classes else None,
            "license": "CC0 (generated for tests)",
        }
        (root / "dataset.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """Folder of a valid 3-class dataset (84 images of 32x32 px); safe to modify."""
    return make_dataset(tmp_path)


@pytest.fixture
def tiny_card(tiny_dataset):
    from dermkit.data import load_card

    return load_card(tiny_dataset)


def _shared_data() -> Path | None:
    from dermkit.errors import DataError

    try:
        from dermkit.data import data_root

        root = data_root()
    except DataError:
        return None
    return root if (root / "ham10000" / "metadata.csv").is_file() else None


SHARED_DATA = _shared_data()
requires_shared_data = pytest.mark.skipif(
    SHARED_DATA is None,
    reason="shared datasets not found (set DERMKIT_DATA to the folder holding ham10000/, ph2/, ...)",
)



# A tiny random open_clip CLIP (32 px, 16-d embeddings): ViT head_width 16 because open_clip derives
# the vision heads as width // head_width (the default 64 would give zero heads at width 32).
CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    """The tiny CLIP saved in open_clip's hub layout (open_clip_config.json + safetensors)."""
    import open_clip
    import torch

    from dermkit.models.encoders import save_open_clip_folder

    torch.manual_seed(0)
    model = open_clip.CLIP(**CLIP_CFG)
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    save_open_clip_folder(model, folder, CLIP_CFG, CLIP_PREPROCESS)
    return folder


# ------------------------------------------------------------------------------ a tiny generative VLM
LLAVA_WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:", "what", "is", "the", "lesion",
               "type", "choose", "one", "of", "bcc", "mel", "nv", "a", ",", ".", "?", ":"]
LLAVA_TEMPLATE = ("{% for m in messages %}{{ 'USER: ' if m['role']=='user' else 'ASSISTANT: ' }}"
                  "{% for c in m['content'] %}{% if c['type']=='image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
                  "{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@pytest.fixture(scope="session")
def vlm_folder(tmp_path_factory):
    """A tiny random LLaVA (llama text model, 2 layers, hidden 32; tiny CLIP vision tower) saved in the
    llava-hf layout with its processor: a word-level tokenizer knowing the tiny dataset's class codes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(LLAVA_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", additional_special_tokens=["<image>"])
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30},
                                                                  crop_size={"height": 30, "width": 30}),
                               tokenizer=tokenizer, patch_size=6, vision_feature_select_strategy="default",
                               chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=30, patch_size=6, projection_dim=32)
    text = LlamaConfig(vocab_size=len(LLAVA_WORDS) + 1, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab["<image>"],
                         vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=25)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llava") / "tiny-llava"
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------ killing a run
@contextlib.contextmanager
def killed_after_first_checkpoint():
    """Inside this block the engine stops (KeyboardInterrupt, as Ctrl-C) right after writing its
    first checkpoint: how the resume tests kill a run after one epoch."""
    from dermkit.engine.loop import Engine

    original = Engine.save_checkpoint

    def save_then_die(self):
        original(self)
        raise KeyboardInterrupt

    Engine.save_checkpoint = save_then_die
    try:
        yield
    finally:
        Engine.save_checkpoint = original


# ------------------------------------------------------------------------------ a local HTTP server
class Server:
    """Serves ``files`` (path -> bytes); ``cut[path] = n`` makes the next response for ``path``
    stop after n bytes (the connection drops); every request's Range header is logged."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.json: dict[str, dict] = {}
        self.cut: dict[str, int] = {}
        self.log: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path
                outer.log.append((path, self.headers.get("Range")))
                if path in outer.json:
                    body = json.dumps(outer.json[path]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = outer.files.get(path.split("?")[0] if path.split("?")[0] in outer.files else path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                limit = outer.cut.pop(path, None)
                self.wfile.write(body if limit is None else body[:limit])
                if limit is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
