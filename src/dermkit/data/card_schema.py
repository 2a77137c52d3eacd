"""What a dataset card may say: its keys and their types, the cards packaged with dermkit, and
the card of a folder (a packaged card with the folder's ``dataset.yaml`` merged on top).

Also the column conventions of metadata.csv that a card builds on: the required columns, the
split names, the metadata types and the spellings of true/false.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from dermkit.errors import DataError
from dermkit.inputs import MAX_YAML_CHARS, load_yaml, read_text

__all__ = [
    "SPLITS",
    "REQUIRED_COLUMNS",
    "RESERVED_COLUMNS",
    "METADATA_TYPES",
    "MODALITIES",
    "CARD_KEYS",
    "BOOLEAN_TRUE",
    "BOOLEAN_FALSE",
    "known_cards",
    "packaged_spec",
    "validate_spec",
    "folder_spec",
    "infer_type",
]

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("image", "diagnosis", "split")
# Columns with a fixed meaning: never treated as metadata features.
RESERVED_COLUMNS = ("image", "label", "diagnosis", "split")
METADATA_TYPES = ("categorical", "numeric", "boolean")
MODALITIES = ("dermoscopy", "clinical", "mixed")
CARD_KEYS = (
    "name",
    "description",
    "modality",
    "classes",
    "class_names",
    "synonyms",
    "group_column",
    "metadata_columns",
    "required_metadata",
    "second_view_column",
    "positive_class",
    "license",
    "duplicate_column",
    "id_column",
    "missing_values",
    "base_card",
    "follow_symlinks",
    "exclude",
)
# Keys whose mapping values are merged (dataset.yaml extends the packaged card) instead of replaced.
_MERGED_KEYS = ("class_names", "synonyms", "metadata_columns")
BOOLEAN_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y"})
BOOLEAN_FALSE = frozenset({"0", "0.0", "false", "f", "no", "n"})


def _cards_dir():
    return resources.files("dermkit.data").joinpath("cards")


def known_cards() -> list[str]:
    """Names of the dataset cards shipped with dermkit (e.g. ``ham10000``)."""
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in _cards_dir().iterdir()
        if entry.name.endswith(".yaml")
    )


def _parse_yaml(text: str, where: str) -> dict:
    spec = load_yaml(text, where, DataError)
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise DataError(f"{where}: expected a mapping of keys (name:, classes:, ...) at the top level")
    return spec


def packaged_spec(name: str) -> dict:
    """The packaged card ``name`` (``dermkit/data/cards/<name>.yaml``) as read, before
    :func:`validate_spec`; DataError for invalid YAML."""
    entry = _cards_dir().joinpath(f"{name}.yaml")
    return _parse_yaml(entry.read_text(encoding="utf-8"), f"packaged card {name}.yaml")


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    new_classes = override.get("classes")
    for key, value in override.items():
        if key in _MERGED_KEYS and isinstance(value, dict) and isinstance(base.get(key), dict):
            inherited = dict(base[key])
            if key != "metadata_columns" and isinstance(new_classes, list):
                # The folder redefines the classes: keep only names/synonyms of classes it kept.
                inherited = {k: v for k, v in inherited.items() if k in new_classes}
            merged[key] = {**inherited, **value}
        else:
            merged[key] = value
    if isinstance(new_classes, list):
        for key in ("class_names", "synonyms"):
            if key not in override and isinstance(merged.get(key), dict):
                merged[key] = {k: v for k, v in merged[key].items() if k in new_classes}
        if merged.get("positive_class") not in new_classes and "positive_class" not in override:
            merged["positive_class"] = None
    return merged


def _none_name(value: Any) -> Any:
    """YAML ``none``/``null``/empty for an optional column name all mean "no such column"."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return value


def _str_list(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise DataError(f"{where}: '{key}' must be a list of names, got {value!r}")
    return [str(v) for v in value]


def _bool(value: Any, key: str, where: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in BOOLEAN_TRUE:
        return True
    if text in BOOLEAN_FALSE:
        return False
    raise DataError(f"{where}: '{key}' must be true or false, got {value!r}")


def validate_spec(spec: dict, where: str) -> dict:
    """Check types in a merged card spec and normalise optional fields; raise DataError."""
    out = dict(spec)
    modality = out.get("modality")
    if modality is not None and modality not in MODALITIES:
        raise DataError(f"{where}: modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if out.get("classes") is not None:
        classes = _str_list(out["classes"], "classes", where)
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        if dupes:
            raise DataError(f"{where}: 'classes' lists {', '.join(dupes)} more than once; list each class once")
        if not classes:
            raise DataError(f"{where}: 'classes' is empty; list the class names or remove the key")
        out["classes"] = classes
    for key in ("class_names", "synonyms", "metadata_columns"):
        value = out.get(key)
        if value is None:
            out[key] = {}
        elif not isinstance(value, dict):
            raise DataError(f"{where}: '{key}' must be a mapping (column/class: value), got {value!r}")
    out["class_names"] = {str(k): str(v) for k, v in out["class_names"].items()}
    out["synonyms"] = {str(k): _str_list(v, f"synonyms.{k}", where) for k, v in out["synonyms"].items()}
    types = {}
    for col, typ in out["metadata_columns"].items():
        if typ not in METADATA_TYPES:
            raise DataError(
                f"{where}: metadata_columns.{col} has type {typ!r}; use one of {', '.join(METADATA_TYPES)}"
            )
        types[str(col)] = typ
    out["metadata_columns"] = types
    out["required_metadata"] = _str_list(out.get("required_metadata"), "required_metadata", where)
    out["follow_symlinks"] = _bool(out.get("follow_symlinks"), "follow_symlinks", where)
    out["missing_values"] = _str_list(out.get("missing_values"), "missing_values", where)
    exclude = _none_name(out.get("exclude"))
    if exclude is not None and not isinstance(exclude, str):
        raise DataError(f"{where}: 'exclude' must be the path of a CSV inside the dataset folder "
                        f"(e.g. exclude: audit/excluded.csv), got {exclude!r}")
    out["exclude"] = exclude
    for key in ("group_column", "second_view_column", "duplicate_column", "id_column", "positive_class"):
        value = _none_name(out.get(key))
        if value is not None and not isinstance(value, (str, int)):
            raise DataError(f"{where}: '{key}' must be a single name, got {value!r}")
        out[key] = None if value is None else str(value)
    classes = out.get("classes")
    if classes is not None:
        for key in ("class_names", "synonyms"):
            unknown = [k for k in out[key] if k not in classes]
            if unknown:
                raise DataError(
                    f"{where}: {key} has entries for {', '.join(map(repr, unknown))} which are not "
                    f"in classes ({', '.join(classes)}); fix the spelling or add them to classes"
                )
        if out["positive_class"] is not None and out["positive_class"] not in classes:
            raise DataError(
                f"{where}: positive_class {out['positive_class']!r} is not one of the classes "
                f"({', '.join(classes)})"
            )
    return out


def folder_spec(folder: Path) -> tuple[dict, tuple[str, ...]]:
    """The checked card spec of a dataset folder and the card files it was built from.

    Defaults come from the packaged card whose name matches ``base_card`` or ``name`` in the
    folder's ``dataset.yaml``, or else the folder's name; ``dataset.yaml`` overrides them (its
    ``class_names``, ``synonyms`` and ``metadata_columns`` extend the defaults). DataError for
    invalid YAML, an unknown ``base_card`` and wrongly typed keys.
    """
    local_file = folder / "dataset.yaml"
    local = {}
    if local_file.is_file():
        local = _parse_yaml(read_text(local_file, "card file", DataError, MAX_YAML_CHARS), str(local_file))
    names = known_cards()
    base_name = _none_name(local.get("base_card"))
    if base_name is not None and base_name not in names:
        raise DataError(
            f"{local_file}: base_card {base_name!r} is not a packaged card ({', '.join(names)})"
        )
    if base_name is None:
        base_name = next((n for n in (local.get("name"), folder.name) if n in names), None)
    spec, sources = {}, []
    if base_name is not None:
        spec = packaged_spec(base_name)
        sources.append(f"packaged card {base_name}.yaml")
    if local:
        spec = _merge(spec, local)
        sources.append(str(local_file))
    where = " + ".join(sources) or str(folder)
    return validate_spec(spec, where), tuple(sources)


def infer_type(values: pd.Series) -> str:
    """Guess a metadata type from non-missing string values: boolean, numeric or categorical."""
    if values.empty:
        return "categorical"
    lowered = set(values.astype(str).str.strip().str.lower().unique())
    if lowered <= BOOLEAN_TRUE | BOOLEAN_FALSE:
        return "boolean"
    if pd.to_numeric(values, errors="coerce").notna().all():
        return "numeric"
    return "categorical"
