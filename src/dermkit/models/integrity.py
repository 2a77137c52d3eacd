"""A model folder checked against itself: the schema of ``model.json`` and its integrity record.

``model.json`` is what gives ``model.safetensors`` its meaning: which output is which class, which
method reads the tensors, at which input size, with which preprocessing. An edit to either file
after the model was saved (two class names swapped, another image size, a truncated or replaced
weights file) used to load and predict with the wrong meaning, or fail deep inside torch with a
``state_dict`` dump. So every folder written by this dermkit (``format_version`` 2) carries an
**integrity record** in its ``model.json``::

    "integrity": {"algorithm": "sha256", "weights": "<SHA-256 of model.safetensors' bytes>",
                  "fields": {"classes": "<16 hex of the field's canonical JSON>", "method": ..., ...}}

written at save (:func:`seal`) over the weights file's bytes and every field of the card except
:data:`RELOCATABLE` (where an outside base model lives: it may move, and its own fingerprint is
checked when it loads), and verified at load (:func:`verify`, called by
:func:`dermkit.models.checkpoint.read_model_card`, the one reader of ``model.json``). A mismatch is
one :class:`~dermkit.errors.ModelError` naming the folder and the field. A per-field hash (not one
digest over everything) is what lets the message name the field.

Folders saved by older dermkit (``format_version`` 1) have no record: they load with a warning.
The record detects edits and damage, not a forger: anyone can recompute it.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

from dermkit.errors import ModelError
from dermkit.io import json_ready

__all__ = ["FORMAT_VERSION", "KNOWN_VERSIONS", "RELOCATABLE", "seal", "verify", "check_schema", "require_fields",
           "state_dict_problem", "weights_digest", "canonical_sha256", "excerpt"]

FORMAT_VERSION = 2  # 2: with an integrity record; 1: dermkit before the record (loads with a warning)
KNOWN_VERSIONS = (1, 2)
# Fields that may be edited after save: each names where an outside model lives (a base encoder, an
# image encoder's weights, an SAE folder), which moves with the user's files; what it points to is
# checked by its own fingerprint (``base_fingerprint``, ``image_fingerprint``: both covered) when it loads.
RELOCATABLE = frozenset({"base_model", "image_encoder", "image_weights", "sae_folder"})
# Fields outside the record: the record itself and the two that name the file's format.
_UNSEALED = frozenset({"integrity", "format", "format_version"})
_HINTS = {
    "classes": "the class names or their order were edited, so outputs would be labelled with the wrong classes",
    "method": "another method would read these weights",
    "image_size": "the model would see images at another size than it was trained on",
    "model": "another architecture would be built for these weights",
    "mean": "the preprocessing was edited", "std": "the preprocessing was edited",
    "temperature": "the recalibration was edited", "class_offsets": "the decision thresholds were edited",
}


def canonical_sha256(value: Any) -> str:
    """SHA-256 of a JSON value's canonical text (sorted keys, no spaces): the same for the value
    as written and as read back."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _field_hash(value: Any) -> str:
    return canonical_sha256(value)[:16]


_digests: dict[tuple, str] = {}
_warned: set[str] = set()


def weights_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time: a folder is read
    several times while it loads)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        _digests[key] = sha.hexdigest()
    return _digests[key]


def _sealed_fields(card: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in card.items() if k not in _UNSEALED and k not in RELOCATABLE}


def seal(card: dict[str, Any], weights: Path) -> dict[str, Any]:
    """``card`` as written (JSON-ready; a format/version/record of a card it was copied from
    dropped) with its integrity record over ``weights`` (already written) and its fields."""
    # The values as they will read back from the JSON file (tuples as lists, NaN as null, paths as text).
    card = json.loads(json.dumps(json_ready({k: v for k, v in card.items() if k not in _UNSEALED}), default=str))
    record = {"algorithm": "sha256", "weights": weights_digest(Path(weights)),
              "fields": {k: _field_hash(v) for k, v in sorted(_sealed_fields(card).items())}}
    return {**card, "integrity": record}


def excerpt(value: Any, limit: int = 80) -> str:
    """A value for a message: its JSON, cut to ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def verify(card: dict[str, Any], folder: Path, weights_name: str) -> None:
    """Check a read ``model.json`` (schema already checked) against its integrity record and its
    weights file; a folder without a record (``format_version`` 1) loads with a warning."""
    card_path = folder / "model.json"
    record = card.get("integrity")
    if card["format_version"] == 1:
        if str(folder.resolve()) in _warned:  # a folder is read several times while it loads: say it once
            return
        _warned.add(str(folder.resolve()))
        warnings.warn(f"{folder} was saved by an older dermkit (model.json format_version 1) without an integrity "
                      "record, so its classes, method and sizes cannot be checked against its weights; it loads as "
                      "it is. Save it again with this dermkit (dermkit.load_predictor(folder).save(new_folder)) to "
                      "add one.", UserWarning, stacklevel=4)
        return
    if not isinstance(record, dict) or not isinstance(record.get("fields"), dict) \
            or not isinstance(record.get("weights"), str):
        raise ModelError(f"{card_path} has format_version 2 but no valid integrity record (the 'integrity' field "
                         "was removed or edited), so its classes and weights cannot be checked. Restore model.json "
                         "from where the model was saved, or retrain.")
    fields = _sealed_fields(card)
    for name in sorted(set(record["fields"]) | set(fields)):
        if name not in fields:
            raise ModelError(f"{card_path}: the field {name!r} was removed after the model was saved (its integrity "
                             f"record lists it). Restore model.json from where the model was saved, or retrain.")
        if name not in record["fields"]:
            raise ModelError(f"{card_path} has a field {name!r} ({excerpt(fields[name])}) that was not there when "
                             "the model was saved (its integrity record does not list it): remove it, or retrain.")
        if _field_hash(fields[name]) != record["fields"][name]:
            why = _HINTS.get(name, "the saved weights only mean what the saved model.json said")
            raise ModelError(f"{card_path}: the field {name!r} does not match the integrity record written at save "
                             f"(now {excerpt(fields[name])}): it was edited after the model was saved; {why}. "
                             "Restore model.json from where the model was saved, or retrain.")
    weights = folder / weights_name
    if not weights.is_file():
        raise ModelError(f"{weights} is missing; a model folder needs the weights its model.json was saved with. "
                         "Re-copy the whole folder.")
    now = weights_digest(weights)
    if now != record["weights"]:
        raise ModelError(f"{weights} does not match the integrity record in {card_path} (SHA-256 "
                         f"{record['weights'][:12]}... at save, {now[:12]}... now, {weights.stat().st_size} bytes): "
                         "the weights file was truncated, damaged or replaced after the model was saved. Re-copy the "
                         "model folder from where it was saved, or retrain.")


# ------------------------------------------------------------------------------ the schema


def _is_type(value: Any, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object",
               bool: "true or false"}


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def require_fields(card: dict[str, Any], fields: dict[str, Any], card_path: Path, method: str) -> None:
    """ModelError naming the first field of ``fields`` (name -> type or tuple of types) that
    ``card`` lacks or holds with another type."""
    for name, kind in fields.items():
        if name not in card:
            raise ModelError(f"{card_path} lacks the field {name!r}, which a {method!r} model folder needs: the file "
                             "was edited or the folder is not what model.json says. Restore model.json, or retrain.")
        if not _is_type(card[name], kind):
            raise ModelError(f"{card_path}: {name} must be {_type_name(kind)} in a {method!r} model folder, got "
                             f"{excerpt(card[name])}. Restore model.json, or retrain.")


def check_schema(card: Any, card_path: Path, expected_format: str) -> dict[str, Any]:
    """The fields every model folder has, with their types: a JSON object of ``format``,
    ``format_version`` (one this dermkit reads), ``classes`` (distinct non-empty names) and, when
    present, ``method`` (a name)."""
    if not isinstance(card, dict):
        raise ModelError(f"{card_path} holds a JSON {type(card).__name__ if card is not None else 'null'} "
                         f"({excerpt(card, 40)}), not an object of fields (format, classes, method, ...); the model "
                         "folder is damaged: restore model.json, or retrain.")
    if card.get("format") != expected_format:
        raise ModelError(f"{card_path} is not a dermkit classifier card (format={excerpt(card.get('format'), 40)}).")
    version = card.get("format_version")
    if "format_version" not in card:
        raise ModelError(f"{card_path} has no format_version; every model folder dermkit writes has one "
                         f"({', '.join(map(str, KNOWN_VERSIONS))}). Restore model.json, or retrain.")
    if isinstance(version, bool) or version not in KNOWN_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > max(KNOWN_VERSIONS)
        raise ModelError(f"{card_path} has format_version {excerpt(version, 40)}; this dermkit reads "
                         f"{', '.join(map(str, KNOWN_VERSIONS))}. "
                         + ("It was saved by a newer dermkit: upgrade dermkit." if newer
                            else "Restore model.json, or retrain."))
    classes = card.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise ModelError(f"{card_path}: classes must be a non-empty list of class names, got "
                         f"{excerpt(classes)}. Restore model.json, or retrain.")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ModelError(f"{card_path}: classes names {repeated} more than once; each output needs its own class. "
                         "Restore model.json, or retrain.")
    if "method" in card and not isinstance(card["method"], str):
        raise ModelError(f"{card_path}: method must be a method name such as 'supervised', got "
                         f"{excerpt(card['method'])}. Restore model.json, or retrain.")
    return card


# ------------------------------------------------------------------------------ torch's load errors

_SIZE = re.compile(r"size mismatch for ([^:]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                   r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")


def state_dict_problem(exc: Exception) -> str:
    """torch's ``load_state_dict`` error in one short sentence (the first size mismatch and how many
    more, the first missing/unexpected tensor names) instead of its dump of every tensor."""
    text = str(exc)
    parts = []
    sizes = _SIZE.findall(text)
    if sizes:
        name, saved, model = sizes[0]
        more = f" (and {len(sizes) - 1} more tensors)" if len(sizes) > 1 else ""
        parts.append(f"{name.strip()} has shape ({saved}) in the weights file but ({model}) in the model that "
                     f"model.json describes{more}")
    for kind, names in _KEYS.findall(text):
        listed = re.findall(r"\"([^\"]*)\"", names)
        where = "the model expects tensors the file lacks" if kind == "Missing" else "the file has tensors the " \
            "model lacks"
        parts.append(f"{where}: {', '.join(listed[:3])}{f' and {len(listed) - 3} more' if len(listed) > 3 else ''}")
    if not parts:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        parts.append(first[:200])
    return "; ".join(parts)
