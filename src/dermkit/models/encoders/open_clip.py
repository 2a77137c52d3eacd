"""open_clip encoders: model folders in the hub layout, built-in architectures, and saving such folders.

A folder holds ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``) and
``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``, read with
``torch.load(weights_only=True)`` only). What :func:`save_open_clip_folder` writes, and what
``hf-hub:ORG/NAME`` repositories hold (:mod:`.hub` finds those files).

Configs written for forks of open_clip may carry keys stock open_clip does not know (PanDerm-2's
``vision_cfg.pretrain_path``): they are dropped with a warning naming them and the file, since
every weight comes from the checkpoint anyway.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dermkit.errors import ModelError
from dermkit.io import atomic_path, write_json, write_text
from dermkit.models.checkpoint import save_tensors
from dermkit.models.encoders.base import TOKENIZER_FILES, EncoderWrapper, compact_size, quiet_transformers

__all__ = ["OPEN_CLIP_CONFIG", "OPEN_CLIP_WEIGHTS", "OPEN_CLIP_BIN", "save_open_clip_folder", "load_open_clip_folder",
           "load_open_clip_arch"]

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_BIN = "open_clip_pytorch_model.bin"
# In the order open_clip itself prefers them (factory._find_checkpoint_in_dir).
OPEN_CLIP_WEIGHT_FILES = (OPEN_CLIP_WEIGHTS, "open_clip_pytorch_model.safetensors", OPEN_CLIP_BIN)


class _OpenClipEncoder(EncoderWrapper):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` and its tokenizer."""

    has_text = True

    def __init__(self, module: nn.Module, tokenizer: Callable, model_cfg: dict, preprocess_cfg: dict, **kwargs):
        super().__init__(module, **kwargs)
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.preprocess_cfg = preprocess_cfg

    def _image_features(self, pixels):
        return self.module.encode_image(pixels, normalize=False)  # CoCa normalises by default

    def tokenize(self, texts):
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts))

    def _text_features(self, tokens):
        return self.module.encode_text(tokens, normalize=False)


# ------------------------------------------------------------------------------ loading


def load_open_clip_folder(folder: Path, source: str) -> EncoderWrapper:
    """An open_clip model folder: ``open_clip_config.json`` + its weights file."""
    weights = next((folder / n for n in OPEN_CLIP_WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise ModelError(
            f"{folder} has {OPEN_CLIP_CONFIG} but no weights: put {OPEN_CLIP_WEIGHTS} "
            f"(or {OPEN_CLIP_BIN}) from the same model next to it."
        )
    return load_open_clip_files(folder / OPEN_CLIP_CONFIG, weights, folder, source)


def load_open_clip_files(
    config_path: Path, weights_path: Path, folder: Path, source: str, name: str | None = None
) -> EncoderWrapper:
    """Build the architecture from ``open_clip_config.json`` and load the weights strictly.

    ``folder`` is where the text tower's ``config.json`` and tokenizer files may be (the model
    folder, or the hub snapshot). Config keys stock open_clip does not know are dropped with a
    warning (see :func:`stock_model_cfg`).
    """
    from open_clip.factory import load_checkpoint
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict
    from safetensors import SafetensorError

    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path} is not readable JSON ({exc}); re-copy it from the model repo.") from exc
    model_cfg = copy.deepcopy(raw.get("model_cfg", raw))
    if not isinstance(model_cfg, dict) or not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelError(f"{config_path} has no open_clip model_cfg (embed_dim, vision_cfg, text_cfg)")
    model_cfg = stock_model_cfg(model_cfg, str(config_path))
    arch = copy.deepcopy(model_cfg)
    text_cfg = model_cfg["text_cfg"]
    # The checkpoint holds every weight: never fetch tower weights (timm/HF) while building.
    model_cfg["vision_cfg"]["timm_model_pretrained"] = False
    if text_cfg.get("hf_model_name"):
        text_cfg["hf_model_pretrained"] = False
        text_cfg["hf_model_name"] = _text_config_source(text_cfg["hf_model_name"], folder)
    model = _build_open_clip(model_cfg, f"{config_path}")

    if weights_path.suffix == ".bin":
        _check_weights_only(weights_path)
    try:
        load_checkpoint(model, str(weights_path), strict=True, weights_only=True)
    except (RuntimeError, KeyError, ValueError, OSError, SafetensorError) as exc:
        raise ModelError(
            f"{weights_path} is unreadable or does not fit the architecture in {config_path} "
            f"({str(exc).splitlines()[0]}); the two files must come from the same model."
        ) from exc

    preprocess_cfg = merge_preprocess_dict(PreprocessCfg(), raw.get("preprocess_cfg", {}) or {})
    preprocess_cfg["size"] = compact_size(model.visual.image_size)  # as open_clip does: the tower decides the size
    tokenizer = _open_clip_tokenizer(text_cfg, folder)
    public_cfg = copy.deepcopy(arch)
    if text_cfg.get("hf_model_name"):
        # Name the folders that really served the text config and tokenizer, so re-saving works.
        public_cfg["text_cfg"]["hf_model_name"] = text_cfg["hf_model_name"]
        if text_cfg.get("hf_tokenizer_name"):
            public_cfg["text_cfg"]["hf_tokenizer_name"] = _tokenizer_source(text_cfg, folder)
    return _wrap_open_clip(model, tokenizer, preprocess_cfg, public_cfg, arch, name=name or folder.name, source=source)


def stock_model_cfg(model_cfg: dict, where: str) -> dict:
    """A copy of an open_clip ``model_cfg`` without the keys stock open_clip does not know.

    Forks of open_clip add their own keys (PanDerm-2's ``vision_cfg.pretrain_path``, a checkpoint
    path its fork loads at build time); stock open_clip's ``CLIPVisionCfg`` / ``CLIPTextCfg`` /
    ``MultimodalCfg`` and model classes reject them. Every weight comes from the checkpoint, so
    they are dropped, with a warning naming them and ``where`` (the config file).
    """
    from open_clip.coca_model import MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    cfg = copy.deepcopy(model_cfg)
    known_top = set(inspect.signature(_model_class(cfg)).parameters) | {"custom_text"}
    dropped = [key for key in cfg if key not in known_top]
    for key in dropped:
        del cfg[key]
    for section, dataclass in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg),
                               ("multimodal_cfg", MultimodalCfg)):
        values = cfg.get(section)
        if isinstance(values, dict):
            fields = {f.name for f in dataclasses.fields(dataclass)}
            unknown = [key for key in values if key not in fields]
            for key in unknown:
                del values[key]
            dropped += [f"{section}.{key}" for key in unknown]
    if dropped:
        warnings.warn(
            f"{where}: ignoring config keys that stock open_clip does not know ({', '.join(dropped)}); they come "
            "from a fork of open_clip, and the weights file holds every weight anyway.", stacklevel=3)
    return cfg


def _model_class(cfg: dict):
    from open_clip import CLIP, CoCa, CustomTextCLIP

    custom_text = cfg.get("custom_text", False) or bool((cfg.get("text_cfg") or {}).get("hf_model_name"))
    return (CoCa if "multimodal_cfg" in cfg else CustomTextCLIP) if custom_text else CLIP


def _build_open_clip(model_cfg: dict, where: str) -> nn.Module:
    cfg = copy.deepcopy(model_cfg)
    model_class = _model_class(cfg)
    cfg.pop("custom_text", None)
    try:
        with quiet_transformers():
            return model_class(**cfg)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, AssertionError) as exc:
        raise ModelError(_build_error(exc, cfg, where)) from exc


def _build_error(exc: Exception, cfg: dict, where: str) -> str:
    """Say what really failed: the text tower's config.json, text_cfg, vision_cfg or the model as a whole."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    functions = {frame.name for frame in frames}
    in_transformers = any("transformers" in Path(frame.filename).parts for frame in frames)
    hf_name = (cfg.get("text_cfg") or {}).get("hf_model_name")
    message = str(exc).strip()
    if not message and frames:  # a bare assert: show the check that failed
        last = frames[-1]
        message = f"{Path(last.filename).name}:{last.lineno}: {last.line}"
    what = f"{type(exc).__name__}: {message}"
    if hf_name and in_transformers:
        return (
            f"cannot build the open_clip model described in {where}: its Hugging Face text tower's config.json "
            f"could not be read from {hf_name!r} ({what}). Make text_cfg.hf_model_name in {where} a local folder "
            f"holding the text model's config.json, or put that config.json next to {OPEN_CLIP_CONFIG}."
        )
    if "_build_text_tower" in functions:
        part = f"the text tower (text_cfg in {where})"
    elif "_build_vision_tower" in functions:
        part = f"the vision tower (vision_cfg in {where})"
    elif "_build_text_decoder_tower" in functions:
        part = f"the text decoder (multimodal_cfg in {where})"
    else:
        part = f"the model described in {where}"
    return f"cannot build {part} with this open_clip ({what}); check those values against open_clip's model configs."


def _text_config_source(hf_model_name: str, folder: Path) -> str:
    """Where the HF text tower's config.json is: the configured folder, a copy in ``folder``, or the Hub id."""
    if Path(hf_model_name).expanduser().is_dir():
        return str(Path(hf_model_name).expanduser())
    local = folder / "config.json"
    if local.is_file():
        from open_clip.hf_configs import arch_dict

        try:
            model_type = json.loads(local.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            model_type = None
        if model_type in arch_dict:  # a text-model config (bert, roberta...), not some other config.json
            return str(folder)
    return hf_model_name  # a Hub id: transformers resolves it from the HF cache or the Hub


def _open_clip_tokenizer(text_cfg: dict, folder: Path | None) -> Callable:
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer

    context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return SimpleTokenizer(context_length=context_length, **kwargs)
    tokenizer_source = _tokenizer_source(text_cfg, folder)
    try:
        with quiet_transformers():
            return HFTokenizer(tokenizer_source, context_length=context_length,
                               tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the tokenizer {tokenizer_source!r} ({exc}). Copy the tokenizer files "
            f"(tokenizer.json, tokenizer_config.json, vocab...) of {hf_name} into {folder}."
        ) from exc


def _tokenizer_source(text_cfg: dict, folder: Path | None) -> str:
    # open_clip's own local-dir loader reads the tokenizer from the model folder; so do we when it is there.
    has_files = folder is not None and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return str(folder) if has_files else text_cfg["hf_tokenizer_name"]


def _wrap_open_clip(model, tokenizer, preprocess_cfg: dict, model_cfg: dict, arch: dict, name: str, source: str):
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    set_model_preprocess_cfg(model, preprocess_cfg)
    cfg = PreprocessCfg(**preprocess_cfg)
    public_preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()}
    return _OpenClipEncoder(
        model, tokenizer, model_cfg=model_cfg, preprocess_cfg=public_preprocess, name=name, source=source,
        kind="open_clip", preprocess=image_transform_v2(cfg, is_train=False), image_size=cfg.size, mean=cfg.mean,
        std=cfg.std, embed_dim=model_cfg["embed_dim"], arch={"model_cfg": arch, "preprocess_cfg": preprocess_cfg},
    )


def _check_weights_only(path: Path) -> None:
    """Refuse a .bin that is anything but plain tensors, before open_clip reads it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        raise ModelError(
            f"{path} is not a plain tensor file and was refused (dermkit only unpickles tensors, "
            f"with weights_only=True: {str(exc).splitlines()[0]}). Get the {OPEN_CLIP_WEIGHTS} "
            "version of the model, or convert a trusted copy to safetensors."
        ) from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")


def load_open_clip_arch(arch: str, tag: str | None, source: str) -> EncoderWrapper:
    """An open_clip built-in architecture (``openclip:ARCH``), random or with a pretrained tag's weights."""
    import open_clip

    arch_spec = f"{arch}@{tag}" if tag else arch
    tag = tag or ""
    if arch not in open_clip.list_models():
        raise ModelError(f"open_clip has no architecture {arch!r}; see open_clip.list_models().")
    try:
        with quiet_transformers():
            model = open_clip.create_model(arch, pretrained=tag or None, pretrained_image=False,
                                           pretrained_text=False, load_weights=bool(tag))
    except Exception as exc:  # download errors come in many types; all mean "weights not available"
        raise ModelError(
            f"could not create {source} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Pretrained tags need the Hugging Face Hub; offline, use a folder with the open_clip hub files."
        ) from exc
    model_cfg = open_clip.get_model_config(arch)
    try:
        with quiet_transformers():
            tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer of {arch} ({exc}); it needs the Hugging Face Hub.") from exc
    arch_desc = {"arch": arch, "tag": tag, **model_cfg}
    return _wrap_open_clip(model, tokenizer, dict(model.visual.preprocess_cfg), model_cfg, arch_desc,
                           name=arch_spec, source=source)


def save_open_clip_folder(
    model: nn.Module, folder: str | os.PathLike, model_cfg: dict, preprocess_cfg: dict | None = None
) -> Path:
    """Write an open_clip model in the hub layout that ``push_to_hf_hub`` uploads.

    Files: ``open_clip_model.safetensors`` (the full state dict), ``open_clip_config.json``
    (``{"model_cfg": ..., "preprocess_cfg": ...}``, written last, so a crash never leaves a config
    pointing at missing weights) and, for a Hugging Face text tower, its tokenizer files and its
    ``config.json``. Each file is written atomically. ``load_encoder(folder)``,
    ``open_clip.create_model('local-dir:FOLDER')`` and open_clip's ``hf-hub:`` loader (once the
    folder is uploaded) all read it.

    ``preprocess_cfg`` defaults to the model's own (``model.visual.preprocess_cfg``), else open_clip's
    defaults; ``size`` always follows the vision tower. The tower "pretrained" flags are saved as
    off, because the weights file already holds every weight.

    A Hugging Face text tower (``text_cfg.hf_model_name``) is named by path or Hub id, and
    transformers builds its *architecture* from that name's ``config.json``; the *weights* always
    come from ``open_clip_model.safetensors``. The copy of ``config.json`` saved here lets
    :func:`load_encoder` rebuild the folder when that path no longer exists (another machine).
    """
    folder = Path(folder)
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelError("model_cfg must have embed_dim, vision_cfg and text_cfg (an open_clip model config)")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(model_cfg, default=list))  # deep copy, tuples -> lists
    if cfg["vision_cfg"].get("timm_model_name"):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    cfg["text_cfg"].pop("hf_model_pretrained", None)
    save_tensors(folder / OPEN_CLIP_WEIGHTS, model.state_dict(), metadata={"format": "pt"})
    if cfg["text_cfg"].get("hf_model_name"):
        _save_text_tower_files(model, cfg["text_cfg"], folder)
    preprocess = _preprocess_to_save(model, preprocess_cfg)
    write_json(folder / OPEN_CLIP_CONFIG, {"model_cfg": cfg, "preprocess_cfg": preprocess})
    return folder


def _preprocess_to_save(model: nn.Module, preprocess_cfg: dict | None) -> dict:
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    visual = getattr(model, "visual", model)
    merged = merge_preprocess_dict(PreprocessCfg(), getattr(visual, "preprocess_cfg", None) or {})
    merged = merge_preprocess_dict(merged, preprocess_cfg or {})
    if getattr(visual, "image_size", None) is not None:
        merged["size"] = compact_size(visual.image_size)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


def _save_text_tower_files(model: nn.Module, text_cfg: dict, folder: Path) -> None:
    """Tokenizer files (open_clip's local-dir loader reads them from the model folder) + text config.json."""
    tokenizer_name = text_cfg.get("hf_tokenizer_name") or text_cfg["hf_model_name"]
    source = Path(tokenizer_name).expanduser()
    if source.is_dir():
        for name in TOKENIZER_FILES:
            if (source / name).is_file() and (source / name).resolve() != (folder / name).resolve():
                with atomic_path(folder / name) as tmp:
                    shutil.copyfile(source / name, tmp)
    else:
        try:
            from transformers import AutoTokenizer

            with quiet_transformers():
                AutoTokenizer.from_pretrained(tokenizer_name).save_pretrained(str(folder))
        except Exception as exc:  # the tokenizer is optional here: open_clip can still fetch it by name
            warnings.warn(f"could not save the tokenizer {tokenizer_name!r} next to the model ({exc}); "
                          "loading the folder will need it from the HF cache or the Hub.", stacklevel=3)
    config = getattr(getattr(model, "text", None), "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        write_text(folder / "config.json", config.to_json_string())
