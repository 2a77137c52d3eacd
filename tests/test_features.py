"""Feature extraction with the on-disk cache: hits, misses, equality with a fresh run, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dermkit.engine.features import (
    FeatureCache,
    cache_key,
    content_hash,
    default_cache_dir,
    extract_features,
    extract_split_features,
)
from dermkit.errors import DataError

torch.set_num_threads(1)

# clip_folder (a tiny random open_clip CLIP in hub layout) comes from conftest.py.


@pytest.fixture
def encoder(clip_folder, monkeypatch):
    """The tiny CLIP on the PyTorch backend: these tests count the images the model encodes by
    wrapping ``encode_image`` (the ONNX Runtime backend is tested in test_onnx.py)."""
    from dermkit.models.encoders import load_encoder

    monkeypatch.setenv("DERMKIT_INFERENCE", "torch")
    return load_encoder(clip_folder)


def count_calls(enc):
    """Wrap enc.encode_image to record the batch size of every call."""
    calls = []
    original = enc.encode_image

    def counting(pixels, normalize=True):
        calls.append(int(pixels.shape[0]))
        return original(pixels, normalize=normalize)

    enc.encode_image = counting
    return calls


def image_paths(folder, split="train"):
    return sorted((folder / "images").glob(f"*_{split}_*.jpg"))


def test_second_run_reads_the_cache(tiny_dataset, encoder, tmp_path):
    paths = image_paths(tiny_dataset)
    calls = count_calls(encoder)
    first = extract_features(encoder, paths, cache_dir=tmp_path / "cache", batch_size=16, num_workers=0,
                             progress=False)
    assert first.shape == (len(paths), encoder.embed_dim) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    assert sum(calls) == len(paths)
    calls.clear()
    second = extract_features(encoder, paths[::-1], cache_dir=tmp_path / "cache", progress=False)
    assert calls == []  # the model did not run
    assert np.array_equal(second, first[::-1])
    fresh = extract_features(encoder, paths, use_cache=False, num_workers=0, progress=False)
    assert np.allclose(fresh, first, atol=1e-5)
    bucket = next((tmp_path / "cache").iterdir())
    assert json.loads((bucket / "bucket.json").read_text())["fingerprint"] == encoder.fingerprint
    assert len(list(bucket.glob("shard-*.npy"))) == 1


def test_changed_image_is_the_only_miss(tiny_dataset, encoder, tmp_path):
    paths = image_paths(tiny_dataset)
    cache = tmp_path / "cache"
    before = extract_features(encoder, paths, cache_dir=cache, num_workers=0, progress=False)
    Image.new("RGB", (32, 32), (250, 250, 250)).save(paths[3], "JPEG")
    calls = count_calls(encoder)
    after = extract_features(encoder, paths, cache_dir=cache, num_workers=0, progress=False)
    assert calls == [1]
    assert np.array_equal(np.delete(after, 3, axis=0), np.delete(before, 3, axis=0))
    assert not np.allclose(after[3], before[3])


def test_identical_files_are_computed_once_and_renames_hit(tiny_dataset, encoder, tmp_path):
    paths = image_paths(tiny_dataset)[:5]
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(paths[0].read_bytes())
    calls = count_calls(encoder)
    feats = extract_features(encoder, [*paths, copy], cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    assert sum(calls) == 5
    assert np.array_equal(feats[0], feats[5])
    assert content_hash(copy) == content_hash(paths[0])


def test_worker_processes_give_the_same_features(tiny_dataset, encoder, tmp_path):
    paths = image_paths(tiny_dataset)
    with_workers = extract_features(encoder, paths, cache_dir=tmp_path / "a", batch_size=16, num_workers=2,
                                    progress=False)
    in_process = extract_features(encoder, paths, cache_dir=tmp_path / "b", batch_size=16, num_workers=0,
                                  progress=False)
    assert np.allclose(with_workers, in_process, atol=1e-6)


def test_key_depends_on_model_and_transform(encoder, tmp_path):
    key = cache_key(encoder)
    assert key["fingerprint"] == encoder.fingerprint and key["precision"] in ("fp32", "bfloat16")
    other = dict(key, transform=dict(key["transform"], image_size=64))
    assert FeatureCache(tmp_path, key).folder != FeatureCache(tmp_path, other).folder
    assert FeatureCache(tmp_path, key).folder == FeatureCache(tmp_path, cache_key(encoder)).folder
    assert " at 0x" not in key["transform"]["preprocess"]


def test_split_features_and_default_dir(tiny_card, encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "dk"))
    assert default_cache_dir() == tmp_path / "dk" / "features"
    feats, labels, rows = extract_split_features(encoder, tiny_card, "val", num_workers=0, progress=False)
    assert feats.shape[0] == len(labels) == len(rows) == 18
    assert [tiny_card.classes[i] for i in labels] == rows["diagnosis"].tolist()
    assert any((tmp_path / "dk" / "features").iterdir())


def test_broken_image_names_the_file(tiny_dataset, encoder, tmp_path):
    paths = image_paths(tiny_dataset)[:4]
    paths[2].write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=paths[2].name):
        extract_features(encoder, paths, cache_dir=tmp_path / "c", num_workers=0, progress=False)
    with pytest.raises(DataError, match="not found"):
        extract_features(encoder, [tmp_path / "missing.jpg"], cache_dir=tmp_path / "c", progress=False)
    assert not list((tmp_path / "c").glob("*/shard-*"))  # nothing half-written


def test_damaged_index_is_recomputed(tiny_dataset, encoder, tmp_path):
    paths = image_paths(tiny_dataset)[:6]
    first = extract_features(encoder, paths, cache_dir=tmp_path, num_workers=0, progress=False)
    index = next(tmp_path.glob("*/shard-*.json"))
    index.write_text("{not json")
    calls = count_calls(encoder)
    again = extract_features(encoder, paths, cache_dir=tmp_path, num_workers=0, progress=False)
    assert sum(calls) == 6 and np.allclose(again, first, atol=1e-6)


def test_image_only_encoders(tiny_dataset, tmp_path):
    from dermkit.models.checkpoint import save_model
    from dermkit.models.encoders import load_encoder
    from dermkit.models.registry import create_classifier

    paths = image_paths(tiny_dataset, "val")[:3]
    enc = load_encoder("timm:resnet18@random")
    assert not enc.has_text
    assert extract_features(enc, paths, cache_dir=tmp_path, num_workers=0, progress=False).shape == (3, 512)
    # A dermkit classifier folder: features are its pre-logits at its own input size.
    torch.manual_seed(0)
    folder = save_model(tmp_path / "model", create_classifier("resnet18", 3, pretrained=False),
                        {"model": "resnet18", "classes": ["bcc", "mel", "nv"], "image_size": 32,
                         "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    clf = load_encoder(folder)
    feats = extract_features(clf, paths, cache_dir=tmp_path, num_workers=0, progress=False)
    assert feats.shape == (3, clf.embed_dim) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    assert len(list(tmp_path.glob("*/bucket.json"))) == 2  # one bucket per encoder
