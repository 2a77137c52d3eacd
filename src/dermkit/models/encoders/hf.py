"""Hugging Face transformers CLIP / SigLIP folders (``config.json`` + ``model.safetensors`` + tokenizer).

Weights are read from safetensors only: a folder with only ``pytorch_model.bin`` is refused with
the command that converts it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from dermkit.errors import ModelError
from dermkit.models.encoders.base import EncoderWrapper, compact_size, pooled_features, quiet_transformers
from dermkit.models.encoders.open_clip import OPEN_CLIP_CONFIG

__all__ = ["HF_VLM_TYPES", "load_hf_folder"]

HF_VLM_TYPES = {"clip": "CLIPModel", "siglip": "SiglipModel"}


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
        return pooled_features(self.module.get_image_features(pixel_values=pixels))

    def tokenize(self, texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        batch = self.tokenizer(
            texts, padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )
        return {k: batch[k] for k in self._input_names if k in batch}

    def _text_features(self, tokens):
        if isinstance(tokens, torch.Tensor):
            tokens = {"input_ids": tokens}
        return pooled_features(self.module.get_text_features(**tokens))


def load_hf_folder(folder: Path, source: str) -> EncoderWrapper:
    """A transformers CLIP / SigLIP folder (``config.json`` + ``model.safetensors`` + tokenizer files)."""
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
        with quiet_transformers():
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
            with quiet_transformers():
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
            self.image_size = compact_size((size["height"], size["width"]))
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
