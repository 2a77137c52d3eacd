"""Dataset cards: a dataset folder (``metadata.csv`` + optional ``dataset.yaml``) as one object.

A card knows the class list, readable class names and synonyms, which column groups images of
one lesion/patient, which metadata columns exist and their types. Defaults for the five known
datasets ship with the package (``dermkit/data/cards/<name>.yaml``); a ``dataset.yaml`` in the
folder overrides or extends them, so a copy of a known dataset or a brand-new one needs no code.

Image paths in metadata.csv are relative to the folder and must stay inside it. A folder whose
``images/`` is a symlink to where the images really live (a large shared image store) is refused
unless ``dataset.yaml`` says ``follow_symlinks: true``; absolute paths and ``..`` that climbs out
of the folder are refused even then.
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dermkit.data.images import PathResolver
from dermkit.errors import DataError

__all__ = [
    "DatasetCard",
    "load_card",
    "data_root",
    "known_cards",
    "csv_lines",
    "SPLITS",
    "METADATA_TYPES",
    "REQUIRED_COLUMNS",
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
)
# Keys whose mapping values are merged (dataset.yaml extends the packaged card) instead of replaced.
_MERGED_KEYS = ("class_names", "synonyms", "metadata_columns")
BOOLEAN_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y"})
BOOLEAN_FALSE = frozenset({"0", "0.0", "false", "f", "no", "n"})


def data_root() -> Path:
    """Folder holding the shared datasets: ``$DERMKIT_DATA``, else the nearest ``shared/data``.

    The search walks up from the package folder and from the current directory and returns the
    first ``<ancestor>/shared/data`` folder (the layout ``<repo>/../shared/data``).
    """
    env = os.environ.get("DERMKIT_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(
                f"DERMKIT_DATA={env!r} is not a folder; set it to the folder that holds the "
                "dataset folders (ham10000/, ph2/, ...)"
            )
        return path
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise DataError(
        "cannot find the shared data folder (no 'shared/data' next to a parent of the package "
        "or of the current directory); set DERMKIT_DATA to the folder that holds the dataset "
        "folders, or pass the path of a dataset folder instead of its name"
    )


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
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise DataError(f"{where}{at}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise DataError(f"{where}: expected a mapping of keys (name:, classes:, ...) at the top level")
    return spec


def _packaged_spec(name: str) -> dict:
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


def _validate_spec(spec: dict, where: str) -> dict:
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


def csv_lines(df: pd.DataFrame) -> pd.Series:
    """Line numbers of ``df``'s rows in metadata.csv (header = line 1).

    Uses the ``csv_line`` column when present (see :meth:`DatasetCard.rows`), else assumes ``df``
    keeps the index of :attr:`DatasetCard.table` (0-based row number).
    """
    if "csv_line" in df.columns:
        return df["csv_line"].astype(int)
    return pd.Series(np.asarray(df.index, dtype=np.int64) + 2, index=df.index)


class DatasetCard:
    """A dataset folder plus its card (class list, names, synonyms, grouping, metadata types).

    Build one with :func:`load_card`. ``table`` is read lazily, once, with every cell kept as a
    string (empty cells are NaN) so image paths and ids are never mangled into numbers.

    Card keys (``dataset.yaml``): name, description, modality, classes, class_names, synonyms,
    group_column, metadata_columns, required_metadata, second_view_column, positive_class,
    license, duplicate_column, id_column, missing_values, base_card and ``follow_symlinks``
    (default false: image paths that lead out of the folder through a symlink, e.g. ``images/``
    linked to an image store elsewhere, are refused; true follows such links deliberately;
    absolute paths and ``..`` out of the folder stay refused). Other keys are kept in ``extra``.
    """

    def __init__(self, root: str | os.PathLike, spec: dict, sources: tuple[str, ...] = ()):
        self.root = Path(root)
        self.sources = sources  # card files this card was built from, for messages
        self.name: str = str(spec.get("name") or self.root.name)
        self.description: str = str(spec.get("description") or "").strip()
        self.modality: str | None = spec.get("modality")
        self.license: str | None = spec.get("license")
        self.group_column: str | None = spec.get("group_column")
        self.second_view_column: str | None = spec.get("second_view_column")
        self.duplicate_column: str | None = spec.get("duplicate_column")
        self.id_column: str | None = spec.get("id_column")
        self.positive_class: str | None = spec.get("positive_class")
        self.required_metadata: list[str] = list(spec.get("required_metadata") or [])
        self.missing_values: list[str] = list(spec.get("missing_values") or [])
        self._follow_symlinks: bool = bool(spec.get("follow_symlinks") or False)
        self.extra: dict = {k: v for k, v in spec.items() if k not in CARD_KEYS}
        self._classes: list[str] | None = spec.get("classes")
        self._class_names: dict = dict(spec.get("class_names") or {})
        self._synonyms: dict = dict(spec.get("synonyms") or {})
        self._metadata_columns: dict = dict(spec.get("metadata_columns") or {})
        self._table: pd.DataFrame | None = None
        self._resolver: PathResolver | None = None

    def __repr__(self) -> str:
        return f"DatasetCard(name={self.name!r}, root={str(self.root)!r})"

    # ------------------------------------------------------------------ table
    @property
    def metadata_csv(self) -> Path:
        return self.root / "metadata.csv"

    @property
    def table(self) -> pd.DataFrame:
        """metadata.csv as a DataFrame of strings (NaN = empty cell), read on first use."""
        if self._table is None:
            self._table = read_metadata(self.metadata_csv)
        return self._table

    def reload(self) -> None:
        """Forget the cached table and resolved folders (after files changed on disk)."""
        self._table = None
        self._resolver = None

    # ---------------------------------------------------------------- classes
    @property
    def classes(self) -> list[str]:
        """Ordered class list: from the card, else the sorted unique ``diagnosis`` values."""
        if self._classes is not None:
            return list(self._classes)
        table = self.table
        if "diagnosis" not in table.columns:
            raise DataError(
                f"{self.metadata_csv}: no 'diagnosis' column, so the class list is unknown; "
                "add a diagnosis column (class name per image)"
            )
        return sorted(str(v) for v in table["diagnosis"].dropna().unique())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> dict[str, str]:
        """Readable name per class (the class name itself when the card gives none)."""
        return {c: self._class_names.get(c, c) for c in self.classes}

    @property
    def synonyms(self) -> dict[str, list[str]]:
        """Alternative names per class (empty list when the card gives none)."""
        return {c: list(self._synonyms.get(c, [])) for c in self.classes}

    def class_index(self, diagnosis: str) -> int:
        """Index of ``diagnosis`` in :attr:`classes`; DataError listing the classes if unknown."""
        classes = self.classes
        if diagnosis in classes:
            return classes.index(diagnosis)
        raise DataError(
            f"unknown diagnosis {diagnosis!r} for dataset {self.name}; known classes: "
            f"{', '.join(classes)}{self._suggest(diagnosis)}"
        )

    def match_class(self, text: str) -> str | None:
        """Class whose name, readable name or synonym equals ``text`` (case-insensitive), or None."""
        key = str(text).strip().casefold()
        for cls in self.classes:
            names = [cls, self.class_names[cls], *self.synonyms[cls]]
            if any(key == n.casefold() for n in names):
                return cls
        return None

    def _suggest(self, value: str) -> str:
        match = self.match_class(value)
        if match is None:
            close = difflib.get_close_matches(str(value), self.classes, n=1)
            match = close[0] if close else None
        return f" (did you mean {match!r}?)" if match is not None else ""

    # --------------------------------------------------------------- metadata
    @property
    def metadata_columns(self) -> dict[str, str]:
        """Metadata column -> type (categorical/numeric/boolean).

        Taken from the card when it declares any; otherwise inferred from metadata.csv (every
        column except image/label/diagnosis/split and the card's path, group and id columns).
        """
        if self._metadata_columns:
            return dict(self._metadata_columns)
        skip = set(RESERVED_COLUMNS) | {
            c
            for c in (self.second_view_column, self.group_column, self.id_column, self.duplicate_column)
            if c
        }
        missing = set(self.missing_values)
        out = {}
        for col in self.table.columns:
            if col in skip or col == "csv_line":
                continue
            values = self.table[col].dropna()
            values = values[~values.isin(missing)]
            out[col] = infer_type(values)
        return out

    # ------------------------------------------------------------------- rows
    def rows(self, split: str) -> pd.DataFrame:
        """Rows of one split with the original index and a ``csv_line`` column (header = 1)."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        table = self.table
        if "split" not in table.columns:
            raise DataError(
                f"{self.metadata_csv} has no 'split' column; create one with "
                "`dermkit data split` (dermkit.data.write_split) or add it (train/val/test per row)"
            )
        df = table[table["split"] == split].copy()
        if df.empty:
            counts = table["split"].value_counts().to_dict()
            raise DataError(
                f"split {split!r} of dataset {self.name} has no rows (split counts: {counts}); "
                f"assign rows to {split!r} in {self.metadata_csv} or re-split with "
                "`dermkit data split --force`"
            )
        df["csv_line"] = np.asarray(df.index, dtype=np.int64) + 2
        return df

    def labels(self, df: pd.DataFrame) -> np.ndarray:
        """Class indices (int64) of ``df['diagnosis']``; DataError naming the CSV line if unknown."""
        if "diagnosis" not in df.columns:
            raise DataError(f"{self.metadata_csv}: no 'diagnosis' column; add the class name of each image")
        classes = self.classes
        index = {c: i for i, c in enumerate(classes)}
        codes = df["diagnosis"].map(index)
        bad = codes.isna()
        if bad.any():
            lines = csv_lines(df)[bad]
            values = df["diagnosis"][bad]
            line, value = int(lines.iloc[0]), values.iloc[0]
            more = f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""
            what = "empty diagnosis" if pd.isna(value) else f"unknown diagnosis {value!r}"
            raise DataError(
                f"{self.metadata_csv} line {line}: {what}{more}; known classes: "
                f"{', '.join(classes)}{'' if pd.isna(value) else self._suggest(value)}. Fix the "
                "value, or add the class to 'classes' in dataset.yaml"
            )
        return codes.to_numpy(dtype=np.int64)

    @property
    def follow_symlinks(self) -> bool:
        """Whether image paths may lead out of :attr:`root` through symlinks (``dataset.yaml``
        key ``follow_symlinks``; ``dermkit data check --follow-symlinks`` sets it for one check)."""
        return self._follow_symlinks

    @follow_symlinks.setter
    def follow_symlinks(self, value: bool) -> None:
        self._follow_symlinks = bool(value)
        self._resolver = None

    def image_path(self, rel: str) -> Path:
        """Path of an image listed in metadata.csv, checked to stay inside :attr:`root`.

        Same as :func:`~dermkit.data.resolve_image_path` (DataError for absolute paths, ``..``
        escapes and, unless :attr:`follow_symlinks`, symlinks pointing outside), with the folder
        resolution cached.
        """
        if self._resolver is None:
            self._resolver = PathResolver(self.root, follow_symlinks=self._follow_symlinks)
        return self._resolver(rel)

    def to_dict(self) -> dict:
        """The card as plain data (for config snapshots and reports)."""
        return {
            "name": self.name,
            "root": str(self.root),
            "description": self.description,
            "modality": self.modality,
            "classes": self.classes,
            "class_names": self.class_names,
            "synonyms": self.synonyms,
            "group_column": self.group_column,
            "metadata_columns": self.metadata_columns,
            "required_metadata": self.required_metadata,
            "second_view_column": self.second_view_column,
            "positive_class": self.positive_class,
            "license": self.license,
            "duplicate_column": self.duplicate_column,
            "id_column": self.id_column,
            "missing_values": self.missing_values,
            "follow_symlinks": self.follow_symlinks,
            **self.extra,
        }


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


def read_metadata(path: Path) -> pd.DataFrame:
    """Read a metadata.csv keeping every cell as a string; DataError for unreadable CSVs."""
    try:
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
        )
    except FileNotFoundError:
        raise DataError(f"{path} not found; a dataset folder needs a metadata.csv") from None
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path} is empty; it needs a header line (image,diagnosis,split,...) and one row per image"
        ) from None
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{path}: cannot parse the CSV ({str(exc).strip()}); check that line for extra commas "
            "(quote values that contain commas)"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from None
    # Stray spaces in the header ("image, diagnosis") would hide required columns.
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _locate(source: str | os.PathLike) -> Path:
    names = known_cards()
    if isinstance(source, str) and source in names and not any(s in source for s in "/\\"):
        return data_root() / source
    path = Path(source).expanduser()
    if path.is_file() and path.name == "metadata.csv":
        return path.parent
    if not path.is_dir():
        if isinstance(source, str) and not any(s in source for s in "/\\."):
            raise DataError(
                f"unknown dataset {source!r}: not a known name ({', '.join(names)}) and no folder "
                "of that name; pass a known name or the path of a folder containing metadata.csv"
            )
        raise DataError(
            f"dataset folder {path} does not exist; pass the path of a folder containing "
            f"metadata.csv or a known dataset name ({', '.join(names)})"
        )
    return path


def load_card(source: str | os.PathLike | DatasetCard) -> DatasetCard:
    """Load a dataset card from a known name (``"ham10000"`` -> ``data_root()/ham10000``) or a folder.

    Defaults come from the packaged card whose name matches ``base_card`` or ``name`` in the
    folder's ``dataset.yaml``, or else the folder's name; ``dataset.yaml`` overrides them (its
    ``class_names``, ``synonyms`` and ``metadata_columns`` extend the defaults).
    """
    if isinstance(source, DatasetCard):
        return source
    folder = _locate(source)
    if not (folder / "metadata.csv").is_file():
        raise DataError(
            f"{folder} has no metadata.csv; a dataset folder needs metadata.csv with columns "
            "image (path relative to the folder), diagnosis (class name) and split "
            "(train/val/test). Pass that folder, or a known dataset name "
            f"({', '.join(known_cards())})"
        )
    local_file = folder / "dataset.yaml"
    local = {}
    if local_file.is_file():
        local = _parse_yaml(local_file.read_text(encoding="utf-8"), str(local_file))
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
        spec = _packaged_spec(base_name)
        sources.append(f"packaged card {base_name}.yaml")
    if local:
        spec = _merge(spec, local)
        sources.append(str(local_file))
    where = " + ".join(sources) or str(folder)
    spec = _validate_spec(spec, where)
    return DatasetCard(folder, spec, tuple(sources))
