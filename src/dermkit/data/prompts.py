"""Zero-shot text prompts as data: class names x templates, from YAML files.

A prompt file is YAML with any of these keys::

    modality: dermoscopy            # what the `image` column shows (dermoscopy | clinical)
    templates:                      # "{}" is replaced by each class name
      - "a dermoscopic image of {}."
      - "a dermatoscopy photo of a {}, a type of skin lesion."
    classes:                        # names per class (class -> list of names)
      mel: [melanoma, malignant melanoma]

Files are layered, later ones overriding earlier ones key by key (``templates`` and
``modality`` are replaced; ``classes`` is merged class by class):

1. the packaged file ``dermkit/data/prompts/<dataset>.yaml``, or for a dataset without one
   ``dermoscopy.yaml`` / ``clinical.yaml`` according to the card's modality;
2. ``prompts.yaml`` in the dataset folder;
3. the file passed explicitly (``--prompts FILE``).

A class no file names gets the card's readable name plus its synonyms. The texts of one class
are embedded, L2-normalised, averaged and re-normalised into one class embedding by
:func:`dermkit.methods.zeroshot.class_embeddings` (the CLIP_benchmark ensemble).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dermkit.data.card import DatasetCard, load_card
from dermkit.errors import DataError
from dermkit.inputs import MAX_YAML_CHARS, load_yaml, read_text

__all__ = ["PromptSpec", "prompt_spec", "load_prompts", "default_class_names", "PROMPTS_FILE"]

PROMPTS_FILE = "prompts.yaml"
_KEYS = ("modality", "templates", "classes")
_MODALITIES = ("dermoscopy", "clinical")


@dataclass
class PromptSpec:
    """Templates and class names for one dataset, plus the files they came from."""

    templates: list[str]
    names: dict[str, list[str]]
    modality: str
    sources: list[str] = field(default_factory=list)

    def texts(self) -> dict[str, list[str]]:
        """Every (name x template) text per class, in class order, without duplicates."""
        out = {}
        for cls, names in self.names.items():
            texts = [t.replace("{}", n) for n in names for t in self.templates]
            out[cls] = list(dict.fromkeys(texts))
        return out

    def to_dict(self) -> dict:
        return {"modality": self.modality, "templates": self.templates, "classes": self.names,
                "sources": self.sources}


def default_class_names(card: DatasetCard) -> dict[str, list[str]]:
    """Readable name + synonyms per class (case-insensitive duplicates dropped)."""
    out = {}
    for cls in card.classes:
        seen, names = set(), []
        for name in (card.class_names[cls], *card.synonyms[cls]):
            key = name.strip().casefold()
            if key and key not in seen:
                seen.add(key)
                names.append(name.strip())
        out[cls] = names
    return out


def _packaged_dir():
    return resources.files("dermkit.data").joinpath("prompts")


def _packaged_file(card: DatasetCard) -> tuple[str, str]:
    """(text, label) of the packaged prompt file for this card."""
    folder = _packaged_dir()
    own = folder.joinpath(f"{card.name}.yaml")
    if own.is_file():
        return own.read_text(encoding="utf-8"), f"packaged prompts {card.name}.yaml"
    default = "clinical" if card.modality == "clinical" else "dermoscopy"
    return folder.joinpath(f"{default}.yaml").read_text(encoding="utf-8"), f"packaged prompts {default}.yaml"


def _parse(text: str, where: str) -> dict:
    spec = load_yaml(text, where, DataError)
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise DataError(f"{where}: expected a mapping with keys {', '.join(_KEYS)}")
    unknown = [k for k in spec if k not in _KEYS]
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_KEYS)}")
    return spec


def _check_layer(spec: dict, card: DatasetCard, where: str, strict: bool) -> dict:
    """Validate one file's keys; ``strict`` refuses classes the card does not have."""
    out: dict = {}
    if "modality" in spec:
        if spec["modality"] not in _MODALITIES:
            raise DataError(f"{where}: modality must be one of {', '.join(_MODALITIES)}, got {spec['modality']!r}")
        out["modality"] = spec["modality"]
    if "templates" in spec:
        templates = spec["templates"]
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
            raise DataError(f"{where}: 'templates' must be a non-empty list of strings")
        missing = [t for t in templates if "{}" not in t]
        if missing:
            raise DataError(
                f"{where}: template {missing[0]!r} has no '{{}}' placeholder for the class name; "
                "write e.g. \"a dermoscopic image of {}.\""
            )
        out["templates"] = [t.strip() for t in templates]
    if "classes" in spec:
        classes = spec["classes"]
        if not isinstance(classes, dict):
            raise DataError(f"{where}: 'classes' must map each class to a list of names")
        names = {}
        for cls, value in classes.items():
            cls = str(cls)
            if cls not in card.classes:
                if strict:
                    raise DataError(
                        f"{where}: class {cls!r} is not a class of dataset {card.name} "
                        f"({', '.join(card.classes)}); fix the spelling"
                    )
                continue  # a packaged file may name classes a trimmed copy of the dataset lacks
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not value or not all(isinstance(v, (str, int, float)) for v in value):
                raise DataError(f"{where}: classes.{cls} must be a non-empty list of names")
            names[cls] = [str(v).strip() for v in value if str(v).strip()]
        out["classes"] = names
    return out


def prompt_spec(card: DatasetCard | str | os.PathLike, path: str | os.PathLike | None = None) -> PromptSpec:
    """Layered prompt spec for a dataset (see the module docstring for the layers)."""
    card = load_card(card)
    text, label = _packaged_file(card)
    layers = [(_check_layer(_parse(text, label), card, label, strict=False), label)]
    local = card.root / PROMPTS_FILE
    if local.is_file():
        spec = _parse(read_text(local, "prompt file", DataError, MAX_YAML_CHARS), str(local))
        layers.append((_check_layer(spec, card, str(local), True), str(local)))
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"prompt file {path} not found; pass a YAML file with templates: and/or classes:")
        given = _parse(read_text(path, "prompt file", DataError, MAX_YAML_CHARS), str(path))
        if not given:
            raise DataError(f"prompt file {path} is empty, so it would change nothing (the packaged prompts would be "
                            "used silently); give templates: and/or classes: {class: [names...]}, or drop --prompts")
        layers.append((_check_layer(given, card, str(path), True), str(path)))
    templates: list[str] = []
    modality = "clinical" if card.modality == "clinical" else "dermoscopy"
    names = default_class_names(card)
    for spec, _ in layers:
        templates = spec.get("templates", templates)
        modality = spec.get("modality", modality)
        names.update(spec.get("classes", {}))
    return PromptSpec(templates=templates, names={c: names[c] for c in card.classes}, modality=modality,
                      sources=[label for _, label in layers])


def load_prompts(card: DatasetCard | str | os.PathLike, path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Prompt texts per class (class -> every name x template text), in the card's class order."""
    return prompt_spec(card, path).texts()
