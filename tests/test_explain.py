"""Grad-CAM explanations (dermkit.models.explain): a model trained to look at one corner is explained
by a map that peaks in that corner; ViT tokens land on the right grid cells; every predictor kind
that has an image tower returns a map of the image's size; the overlay PNG is the blend it claims."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dermkit.models.explain import SaliencyModule, overlay, overlay_png, saliency_map, target_layers_for, tokens_to_map

SIZE, PATCH = 64, 14


def _corner_images(n: int, rng: np.random.Generator):
    """Noise images; class 1 has a bright patch in the top-left corner, class 0 in the bottom-right."""
    x = rng.uniform(0, 0.5, size=(n, 3, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    for i, label in enumerate(y):
        if label == 1:
            x[i, :, 2:2 + PATCH, 2:2 + PATCH] = 1.0
        else:
            x[i, :, -2 - PATCH:-2, -2 - PATCH:-2] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y)


class CornerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def corner_model():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = CornerNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = _corner_images(256, rng)
    for _ in range(150):
        idx = torch.from_numpy(rng.integers(0, len(x), 32))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = _corner_images(64, np.random.default_rng(1))
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    assert accuracy > 0.95, f"the corner model did not learn (test accuracy {accuracy})"
    return model.eval()


def _to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


def _preprocess(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


@pytest.mark.parametrize("label, corner", [(1, (0, 0)), (0, (1, 1))])
def test_map_of_a_corner_model_peaks_in_that_corner(corner_model, label, corner):
    layers, reshape, kind = target_layers_for(corner_model, torch.zeros(1, 3, SIZE, SIZE))
    assert kind == "cnn" and reshape is None
    # the last layer with a spatial output (the Sequential that ends with it finishes last)
    assert layers[0] in (corner_model.features, corner_model.features[-1])
    saliency = SaliencyModule(corner_model, _preprocess, layers, reshape, kind)
    x, y = _corner_images(40, np.random.default_rng(2))
    checked = 0
    for xi, yi in zip(x, y):
        if int(yi) != label:
            continue
        image = _to_pil(xi)
        heat, target = saliency_map(saliency, image)
        assert target == label  # the top class by default
        assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
        assert 0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0.5
        row, col = np.unravel_index(int(heat.argmax()), heat.shape)
        assert (row >= SIZE // 2, col >= SIZE // 2) == (bool(corner[0]), bool(corner[1])), (row, col)
        # the patch's own quadrant holds most of the map's mass
        half = SIZE // 2
        quadrant = heat[half * corner[0]:half * (corner[0] + 1), half * corner[1]:half * (corner[1] + 1)]
        assert quadrant.sum() > 0.5 * heat.sum()
        checked += 1
    assert checked >= 10


def test_explaining_another_class_moves_the_map(corner_model):
    """A map for class 0 on an image with the class-1 patch must not peak on that patch."""
    layers, reshape, kind = target_layers_for(corner_model, torch.zeros(1, 3, SIZE, SIZE))
    saliency = SaliencyModule(corner_model, _preprocess, layers, reshape, kind)
    x, y = _corner_images(20, np.random.default_rng(3))
    image = _to_pil(x[int(torch.nonzero(y == 1)[0])])
    top, _ = saliency_map(saliency, image, target=1)
    other, target = saliency_map(saliency, image, target=0)
    assert target == 0
    half = SIZE // 2
    assert top[:half, :half].sum() > other[:half, :half].sum()


def test_vit_tokens_land_on_their_grid_cells():
    # 1 class token + a 2x3 grid; token k of the grid carries the value k in every channel.
    grid = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1).expand(1, 6, 4)
    tokens = torch.cat([torch.full((1, 1, 4), -1.0), grid], dim=1)
    fmap = tokens_to_map((2, 3), prefix=1)(tokens)
    assert fmap.shape == (1, 4, 2, 3)
    assert fmap[0, 0].tolist() == [[0, 1, 2], [3, 4, 5]]
    # sequence-first layout (L, N, D), as older open_clip transformers give
    assert torch.equal(tokens_to_map((2, 3), 1, batch_first=False)(tokens.transpose(0, 1)), fmap)
    with pytest.raises(Exception, match="2x2 grid"):
        tokens_to_map((2, 2), prefix=1)(tokens)


def test_overlay_is_the_jet_blend_of_the_map():
    from matplotlib import colormaps

    image = Image.new("RGB", (20, 10), (200, 100, 50))
    heat = np.zeros((10, 20), dtype=np.float32)
    heat[:, 10:] = 1.0
    png = overlay_png(image, heat, alpha=0.5)
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    assert decoded.shape == (10, 20, 3)
    for value, col in ((0.0, 0), (1.0, 15)):
        expected = 0.5 * np.array([200, 100, 50]) / 255 + 0.5 * np.array(colormaps["jet"](value)[:3])
        np.testing.assert_allclose(decoded[5, col] / 255, expected, atol=1 / 255)
    # a map at another size is resized to the image
    assert overlay(image, np.ones((3, 3), dtype=np.float32)).size == (20, 10)


# ------------------------------------------------------------------------------ every predictor with an image tower

KINDS = {
    "supervised": ({"model": "timm:test_resnet@random", "image_size": 32, "batch_size": 16, "num_workers": 0,
                    "epochs": 1}, "cnn"),
    "zeroshot": ({"model": "{clip}", "num_workers": 0}, "vit"),
    "linear_probe": ({"model": "{clip}", "num_workers": 0, "Cs": [1.0]}, "vit"),
    "prompt_learning": ({"model": "{clip}", "task": "melanoma_vs_rest", "variant": "coop", "ift": False,
                         "batch_size": 8, "num_workers": 0, "epochs": 1}, "vit"),
}


@pytest.mark.parametrize("method", sorted(KINDS))
def test_saliency_module_computes_the_predictors_own_probabilities(method, tmp_path, clip_folder, monkeypatch):
    """The module Grad-CAM differentiates is the model that predicts: same probabilities as predict_paths."""
    import dermkit
    from conftest import make_dataset

    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path)
    raw, kind = KINDS[method]
    config = {"method": method, "data": str(data), "n_bootstrap": 10,
              **{k: (v.replace("{clip}", str(clip_folder)) if isinstance(v, str) else v) for k, v in raw.items()}}
    dermkit.run(config, out=tmp_path / "run", progress=False)
    predictor = dermkit.load_predictor(tmp_path / "run" / "model")
    paths = [data / "images" / f"{c}_test_00.jpg" for c in ("bcc", "mel", "nv")]
    expected = predictor.predict_paths(paths)  # runs under inference mode first, as a server does
    saliency = predictor.saliency_module()
    assert saliency is not None and saliency.kind == kind
    from dermkit.data.images import open_image
    from dermkit.models.onnx import inference_backend
    from dermkit.runtime import resolve_precision

    # the precision the predictor ran in: on ONNX Runtime (the CPU default) fp32; on PyTorch, feature
    # extraction and the supervised predictor use the engine's "auto" rule (bf16 autocast on CPUs
    # with native bf16); prompt learning runs in fp32
    torch_backend = inference_backend("cpu") == "torch"
    amp = (None if not torch_backend and method in ("supervised", "zeroshot", "linear_probe") else
           getattr(predictor, "amp_dtype", None) if method == "supervised" else
           resolve_precision("auto", torch.device("cpu")) if method in ("zeroshot", "linear_probe") else None)
    for path, row in zip(paths, expected):
        image = open_image(path)
        pixels = saliency.preprocess(image).unsqueeze(0).float()
        with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            if method in ("zeroshot", "linear_probe"):  # embeddings under autocast, the head in fp32 (numpy there)
                embeddings = saliency.module.enc.encode_image(pixels, normalize=True).float()
                with torch.autocast("cpu", enabled=False):
                    logits = saliency.module.head(embeddings.double())
            else:
                logits = saliency.module(pixels)
        np.testing.assert_allclose(torch.softmax(logits.double(), 1)[0].numpy(), row, atol=1e-4)
        heat, target = saliency_map(saliency, image)
        assert heat.shape == (image.height, image.width) and 0 <= heat.min() and heat.max() <= 1
        assert target == int(np.argmax(row))


def test_models_without_an_image_tower_have_no_saliency_module(tmp_path, clip_folder, monkeypatch):
    import dermkit
    from conftest import make_dataset

    monkeypatch.setenv("DERMKIT_CACHE", str(tmp_path / "cache"))
    data = make_dataset(tmp_path)
    dermkit.run({"method": "fusion", "data": str(data), "image_encoder": str(clip_folder), "use_meta": True,
                 "hidden": 16, "num_heads": 2, "meta_num_heads": 2, "epochs": 1, "n_bootstrap": 10},
                out=tmp_path / "run", progress=False)
    assert dermkit.load_predictor(tmp_path / "run" / "model").saliency_module() is None
