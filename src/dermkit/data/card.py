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

import csv
import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dermkit.data.images import PathResolver, SymlinkEscape, csv_image_path
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
    "MISSING_TOKENS",
    "read_metadata",
    "spelling_key",
    "spelling_difference",
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
# Cells meaning "unknown" in the key columns (diagnosis, label, split, the group column), on top
# of the card's missing_values: read as missing, never as a class, a split or one shared group.
MISSING_TOKENS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "None", "none", "-", "?"})
DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


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


def spelling_key(value) -> str:
    """``value`` without case and with runs of spaces collapsed: spellings of one class name
    that differ only by case or spacing ("Melanoma", "melanoma", "melanoma  ") share a key."""
    return " ".join(str(value).split()).casefold()


def spelling_difference(*names) -> str:
    """"case" when ``names`` differ only by case, else "case or spacing"."""
    return "case" if len({str(n).casefold() for n in names}) == 1 else "case or spacing"


def _fmt_lines(lines, limit: int = 8) -> str:
    lines = [int(x) for x in lines]
    word = "line" if len(lines) == 1 else "lines"
    head = ", ".join(str(x) for x in lines[:limit])
    return f"{word} {head}" + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


class DatasetCard:
    """A dataset folder plus its card (class list, names, synonyms, grouping, metadata types).

    Build one with :func:`load_card`. ``table`` is read lazily, once, with every cell kept as a
    string (empty cells are NaN) so image paths and ids are never mangled into numbers. In the key
    columns (diagnosis, label, split and the group column) surrounding spaces are removed and
    the missing-value tokens (:data:`MISSING_TOKENS` plus the card's ``missing_values``) become
    NaN, so "NA" is never a class, a split or one lesion shared by unrelated rows.

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
        self._image_lines: dict[str, tuple[int, str]] | None = None
        # Set when the table is read: the CSV delimiter, and per key column the original
        # missing-value tokens (e.g. 'NA') of the cells that were read as missing.
        self._csv_delimiter: str = ","
        self._missing_tokens: dict[str, pd.Series] = {}

    def __repr__(self) -> str:
        return f"DatasetCard(name={self.name!r}, root={str(self.root)!r})"

    # ------------------------------------------------------------------ table
    @property
    def metadata_csv(self) -> Path:
        return self.root / "metadata.csv"

    @property
    def table(self) -> pd.DataFrame:
        """metadata.csv as a DataFrame of strings (NaN = empty cell), read on first use.

        The delimiter (comma, semicolon, tab or pipe) is detected (:attr:`csv_delimiter`); key
        columns are normalised (see the class docstring).
        """
        if self._table is None:
            table, self._csv_delimiter = _read_csv(self.metadata_csv)
            self._table = self._normalise(table)
        return self._table

    @property
    def csv_delimiter(self) -> str:
        """The delimiter metadata.csv is written with ("," unless it uses ";", tab or "|")."""
        self.table  # noqa: B018 - reads the file once
        return self._csv_delimiter

    @property
    def missing_tokens(self) -> dict[str, pd.Series]:
        """Per key column, the original text (e.g. ``'NA'``) of the cells read as missing,
        indexed like :attr:`table`; columns without such cells are absent."""
        self.table  # noqa: B018
        return self._missing_tokens

    @property
    def key_columns(self) -> list[str]:
        """Columns whose cells are stripped and whose missing-value tokens become NaN."""
        cols = ["diagnosis", "label", "split"]
        if self.group_column and self.group_column not in cols:
            cols.append(self.group_column)
        return cols

    def _normalise(self, table: pd.DataFrame) -> pd.DataFrame:
        tokens = set(MISSING_TOKENS) | {str(v).strip() for v in self.missing_values}
        self._missing_tokens = {}
        for col in self.key_columns:
            if col not in table.columns:
                continue
            raw = table[col]
            text = raw.str.strip()
            missing = text.isin(tokens) & raw.notna()
            if missing.any():
                self._missing_tokens[col] = raw[missing]
            table[col] = text.mask(missing)
        return table

    def reload(self) -> None:
        """Forget the cached table and resolved folders (after files changed on disk)."""
        self._table = None
        self._resolver = None
        self._image_lines = None

    # ---------------------------------------------------------------- classes
    @property
    def classes(self) -> list[str]:
        """Ordered class list: from the card, else the sorted unique ``diagnosis`` values.

        Without a class list in the card, diagnoses that differ only by case or spacing
        ("Melanoma" and "melanoma") are refused (DataError naming both spellings and their CSV
        lines) instead of becoming two classes.
        """
        if self._classes is not None:
            return list(self._classes)
        variants = self.spelling_variants()
        if variants:
            raise DataError("; ".join(self.variants_message(v) for v in variants))
        return self.table_classes()

    def table_classes(self) -> list[str]:
        """Sorted unique ``diagnosis`` values of metadata.csv (the class list when the card has none)."""
        table = self.table
        if "diagnosis" not in table.columns:
            raise DataError(
                f"{self.metadata_csv} line 1 (header): no 'diagnosis' column, so the class list is "
                "unknown; add a diagnosis column (class name per image)"
            )
        return sorted(str(v) for v in table["diagnosis"].dropna().unique())

    def spelling_variants(self) -> list[dict[str, list[int]]]:
        """Diagnoses of metadata.csv that differ only by case or spacing, as one
        ``{spelling: [csv lines]}`` per class name (most frequent spelling first); empty if none."""
        if "diagnosis" not in self.table.columns:
            return []
        diag = self.table["diagnosis"].dropna()
        lines = csv_lines(self.table).loc[diag.index]
        groups: dict[str, dict[str, list[int]]] = {}
        for value, line in zip(diag.tolist(), lines.tolist()):
            groups.setdefault(spelling_key(value), {}).setdefault(value, []).append(int(line))
        out = []
        for spellings in groups.values():
            if len(spellings) > 1:
                out.append(dict(sorted(spellings.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))))
        return out

    def variants_message(self, spellings: dict[str, list[int]]) -> str:
        """Message for one group of :meth:`spelling_variants` (file, lines, column and the fix)."""
        names = list(spellings)
        what = spelling_difference(*names)
        listed = " and ".join(f"{n!r} ({_fmt_lines(spellings[n])})" for n in names)
        return (
            f"{self.metadata_csv}, column 'diagnosis': {listed} differ only by {what}, so they would "
            f"become {len(names)} classes; use one spelling (e.g. {names[0]!r}) on every line, or "
            "list the classes in dataset.yaml (classes: [...]) to fix the class names"
        )

    def class_spelling(self, value) -> str | None:
        """The class that ``value`` matches except for case or spacing, or None."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        key = spelling_key(value)
        return next((c for c in self.classes if spelling_key(c) == key), None)

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
            if pd.isna(value):
                token = self.missing_tokens.get("diagnosis", pd.Series(dtype=object)).get(values.index[0])
                what = "empty diagnosis" + (f" ({token!r} means missing)" if token is not None else "")
                hint = ""
            else:
                match = self.class_spelling(value)
                what = f"unknown diagnosis {value!r}"
                if match is not None:
                    what = (
                        f"diagnosis {value!r} differs only by {spelling_difference(value, match)} "
                        f"from the class {match!r}"
                    )
                hint = self._suggest(value)
            raise DataError(
                f"{self.metadata_csv} line {line}, column 'diagnosis': {what}{more}; known classes: "
                f"{', '.join(classes)}{hint}. Fix the value (exact spelling and case), or add the "
                "class to 'classes' in dataset.yaml"
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
        resolution cached; those errors name the metadata.csv line.

        The path is an :class:`~dermkit.data.images.ImagePath` that remembers its metadata.csv
        line and column, so an image error raised later (``open_image``) names them and suggests
        fixing the path in metadata.csv or removing the row.
        """
        if self._resolver is None:
            self._resolver = PathResolver(self.root, follow_symlinks=self._follow_symlinks)
        where = self._where(rel)
        try:
            path = self._resolver(rel)
        except SymlinkEscape as exc:
            raise SymlinkEscape(f"{where}: {exc}", exc.link, exc.target) from None
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        return csv_image_path(path, where)

    def _where(self, rel) -> str:
        """``".../metadata.csv line N, column 'image' ('rel')"`` for an image path of the table."""
        if self._image_lines is None:
            found: dict[str, tuple[int, str]] = {}
            cols = [c for c in ("image", self.second_view_column) if c and c in self.table.columns]
            for col in cols:
                values = self.table[col].dropna()
                for value, line in zip(values.tolist(), csv_lines(self.table).loc[values.index].tolist()):
                    found.setdefault(str(value), (int(line), col))
            self._image_lines = found
        hit = self._image_lines.get(str(rel))
        if hit is None:
            return f"{self.metadata_csv} ({rel!r})"
        return f"{self.metadata_csv} line {hit[0]}, column '{hit[1]}' ({rel!r})"

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


def detect_delimiter(path: Path) -> str:
    """The delimiter of a CSV file: comma, semicolon, tab or pipe.

    ``csv.Sniffer`` looks at the first lines; the answer must split the header into at least as
    many columns as any other candidate (the header splits best on its real delimiter), ties go
    to the sniffed one, then to the comma.
    """
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            sample = fh.read(65536)
    except OSError:
        return ","
    lines = sample.splitlines()[:20]
    if not lines:
        return ","
    try:
        sniffed = csv.Sniffer().sniff("\n".join(lines), delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        sniffed = None

    def width(delimiter: str) -> int:
        return len(next(csv.reader([lines[0]], delimiter=delimiter), []))

    return max(DELIMITERS, key=lambda d: (width(d), d == sniffed, d == ","))


def _read_csv(path: Path) -> tuple[pd.DataFrame, str]:
    """metadata.csv as strings plus its delimiter; DataError (file, line, fix) when unreadable."""
    delimiter = detect_delimiter(path)
    try:
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig", sep=delimiter
        )
    except FileNotFoundError:
        raise DataError(f"{path} not found; a dataset folder needs a metadata.csv") from None
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path} line 1: the file is empty; write a header line (image,diagnosis,split,...) "
            "and one row per image"
        ) from None
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{path}: cannot parse the CSV ({str(exc).strip()}); check that line for extra "
            f"{DELIMITER_NAMES[delimiter]}s (quote values that contain them)"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from None
    # pandas renames a repeated header name to "name.1": find repeats in the header itself.
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = [c.strip() for c in next(csv.reader(fh, delimiter=delimiter), [])]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        where = "; ".join(
            f"{c!r} in columns {', '.join(str(i + 1) for i, h in enumerate(header) if h == c)}"
            for c in repeated
        )
        raise DataError(
            f"{path} line 1 (header): repeated column name {where}; keep one column of each name "
            "(delete or rename the others)"
        )
    # Stray spaces in the header ("image, diagnosis") would hide required columns.
    df.columns = [str(c).strip() for c in df.columns]
    return df, delimiter


def read_metadata(path: Path) -> pd.DataFrame:
    """Read a metadata.csv keeping every cell as a string; DataError for unreadable CSVs.

    The delimiter (comma, semicolon, tab or pipe) is detected; a byte-order mark is ignored; a
    header naming one column twice is refused. Cells are not normalised here (see
    :attr:`DatasetCard.table`).
    """
    return _read_csv(Path(path))[0]


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
