"""ONNX Runtime for frozen image towers: the same features as PyTorch (to 1e-4), exported once and
cached by fingerprint, a damaged cache file re-exported, a model it cannot match falls back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermkit.data.images import open_image
from dermkit.engine.features import extract_features
from dermkit.errors import ConfigError
from dermkit.models.encoders import load_encoder
from dermkit.models.onnx import inference_backend, onnx_function


@pytest.fixture
def paths(tiny_dataset):
    return sorted(str(p) for p in (tiny_dataset / "images").glob("*.jpg"))[:12]


def test_onnx_features_equal_torch_features_and_are_cached(clip_folder, paths, tmp_path, monkeypatch):
    monkeypatch.setenv("DERMKIT_ONNX_CACHE", str(tmp_path / "onnx"))
    enc = load_encoder(clip_folder)
    monkeypatch.setenv("DERMKIT_INFERENCE", "torch")
    assert inference_backend("cpu") == "torch"
    with torch.no_grad():  # the plain fp32 loop (the torch path may use bf16 where the CPU has it)
        ref = enc.encode_image(torch.stack([enc.preprocess(open_image(p)) for p in paths])).numpy()
    monkeypatch.setenv("DERMKIT_INFERENCE", "onnx")
    assert inference_backend("cpu") == "onnx"
    fast = extract_features(enc, paths, use_cache=False, num_workers=0, progress=False)
    np.testing.assert_allclose(fast, ref, atol=1e-4)
    files = list((tmp_path / "onnx").glob("encode_image-*.onnx"))
    assert len(files) == 1 and enc.fingerprint in files[0].name
    stamp = files[0].stat().st_mtime_ns
    extract_features(enc, paths, use_cache=False, num_workers=0, progress=False)
    assert files[0].stat().st_mtime_ns == stamp  # exported once
    files[0].write_bytes(b"not an onnx file")  # damaged: exported again, same numbers
    np.testing.assert_allclose(extract_features(enc, paths, use_cache=False, num_workers=0, progress=False), ref,
                               atol=1e-4)
    assert files[0].stat().st_size > 1000


def test_a_model_onnx_cannot_match_falls_back_to_torch(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    assert onnx_function(module, (8, 8), key="conv", cache_dir=tmp_path) is not None
    with pytest.warns(UserWarning, match="differs from PyTorch"):
        assert onnx_function(module, (8, 8), key="conv-strict", tolerance=-1.0, cache_dir=tmp_path) is None


def test_unexportable_model_falls_back_with_a_warning(tmp_path):
    class Weird(torch.nn.Module):
        def forward(self, x):
            return (torch.as_tensor(np.asarray(x.sum().item()))[None].expand(len(x), 1) * 0
                    + x.flatten(1)[:, :1].numpy().sum())

    with pytest.warns(UserWarning, match="ONNX Runtime cannot run"):
        assert onnx_function(Weird(), (4, 4), key="weird", cache_dir=tmp_path) is None


def test_bad_backend_setting_is_refused(monkeypatch):
    monkeypatch.setenv("DERMKIT_INFERENCE", "tensorrt")
    with pytest.raises(ConfigError, match="DERMKIT_INFERENCE"):
        inference_backend("cpu")
    monkeypatch.setenv("DERMKIT_INFERENCE", "auto")
    assert inference_backend("cuda") == "torch"
