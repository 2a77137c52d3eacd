"""Dataset cards: a dataset folder (``metadata.csv`` + optional ``dataset.yaml``) as one object.

A card knows the class list, readable class names and synonyms, which column groups images of
one lesion/patient, which metadata columns exist and their types. Defaults for the five known
datasets ship with the package (``dermkit/data/cards/<name>.yaml``); a ``dataset.yaml`` in the
folder overrides or extends them, so a copy of a known dataset or a brand-new one needs no code.

Image paths in metadata.csv are relative to the folder and must stay inside it. A folder whose
``images/`` is a symlink to where the images really live (a large shared image store) is refused
unless ``dataset.yaml`` says ``follow_symlinks: true``; absolute paths and ``..`` that climbs out
of the folder are refused even then.

Exclusions are data: ``exclude: audit/excluded.csv`` in ``dataset.yaml`` names a CSV inside the
folder with columns ``image,reason`` (``image`` as in metadata.csv). :meth:`DatasetCard.rows`
leaves those images out, so every command that trains or evaluates on the card skips them, and
says once (a warning) how many rows it left out and why. ``metadata.csv`` itself is untouched.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from dermkit.data.card_schema import CARD_KEYS, RESERVED_COLUMNS, SPLITS, folder_spec, infer_type, known_cards
from dermkit.data.images import PathResolver, SymlinkEscape, csv_image_path
from dermkit.data.metadata_csv import csv_lines, line_list, read_metadata_and_delimiter
from dermkit.data.skin_type import with_skin_type
from dermkit.errors import DataError
from dermkit.values import missing_mask, spelling_difference, spelling_key

__all__ = ["DatasetCard", "load_card", "data_root"]


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


class DatasetCard:
    """A dataset folder plus its card (class list, names, synonyms, grouping, metadata types).

    Build one with :func:`load_card`. ``table`` is read lazily, once, with every cell kept as a
    string (empty cells are NaN) so image paths and ids are never mangled into numbers. In the key
    columns (diagnosis, label, split and the group column) surrounding spaces are removed and
    the missing-value tokens (:data:`dermkit.values.MISSING_TOKENS` plus the card's
    ``missing_values``, in any letter case) become NaN, so "NA" is never a class, a split or one
    lesion shared by unrelated rows.

    Card keys (``dataset.yaml``): name, description, modality, classes, class_names, synonyms,
    group_column, metadata_columns, required_metadata, second_view_column, positive_class,
    license, duplicate_column, id_column, missing_values, base_card and ``follow_symlinks``
    (default false: image paths that lead out of the folder through a symlink, e.g. ``images/``
    linked to an image store elsewhere, are refused; true follows such links deliberately;
    absolute paths and ``..`` out of the folder stay refused) and ``exclude`` (a CSV inside the
    folder, columns image,reason: images :meth:`rows` leaves out, see :attr:`exclusions`). Other
    keys are kept in ``extra``.
    """

    def __init__(self, root: str | os.PathLike, spec: dict, sources: tuple[str, ...] = (),
                 table: pd.DataFrame | None = None):
        """``spec``: the checked card keys (see :func:`~dermkit.data.card_schema.folder_spec`);
        ``sources``: the card files it came from; ``table``: a table to use instead of reading
        metadata.csv (a derived card's relabelled copy, see :func:`~dermkit.data.tasks.derive_task`)."""
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
        self.exclude: str | None = spec.get("exclude")
        self.extra: dict = {k: v for k, v in spec.items() if k not in CARD_KEYS}
        self._classes: list[str] | None = spec.get("classes")
        self._class_names: dict = dict(spec.get("class_names") or {})
        self._synonyms: dict = dict(spec.get("synonyms") or {})
        self._metadata_columns: dict = dict(spec.get("metadata_columns") or {})
        self._table: pd.DataFrame | None = table
        self._resolver: PathResolver | None = None
        self._image_lines: dict[str, tuple[int, str]] | None = None
        # Set when the table is read: the CSV delimiter, and per key column the original
        # missing-value tokens (e.g. 'NA') of the cells that were read as missing.
        self._csv_delimiter: str = ","
        self._missing_tokens: dict[str, pd.Series] = {}
        self._exclusions: pd.DataFrame | None = None
        self._excluded_rows: pd.Series | None = None  # reason kind per excluded row of the table
        self._exclusions_reported = False

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
            table, self._csv_delimiter = read_metadata_and_delimiter(self.metadata_csv)
            self._table = self._normalise(table)
        return self._table

    def analysis_table(self) -> pd.DataFrame:
        """A copy of :attr:`table` with the columns analyses group by under one name whatever the
        release calls them: ``fitzpatrick`` (I-VI, see :mod:`dermkit.data.skin_type`)."""
        return with_skin_type(self.table.copy())

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
        self._missing_tokens = {}
        for col in self.key_columns:
            if col not in table.columns:
                continue
            raw = table[col]
            text = raw.str.strip()
            missing = raw.notna() & pd.Series(missing_mask(raw, self.missing_values), index=raw.index, dtype=bool)
            if missing.any():
                self._missing_tokens[col] = raw[missing]
            table[col] = text.mask(missing)
        return table

    def reload(self) -> None:
        """Forget the cached table and resolved folders (after files changed on disk)."""
        self._table = None
        self._resolver = None
        self._image_lines = None
        self._exclusions = None
        self._excluded_rows = None

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
        listed = " and ".join(f"{n!r} ({line_list(spellings[n])})" for n in names)
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

    @property
    def declared_classes(self) -> list[str] | None:
        """The class list the card declares (``classes:``), or None when the classes come from
        metadata.csv's diagnoses (see :attr:`classes`)."""
        return None if self._classes is None else list(self._classes)

    @property
    def declared_class_names(self) -> dict[str, str]:
        """``class_names`` as the card declares them, entries for unknown classes included (for
        `dermkit data check`); :attr:`class_names` is the per-class view."""
        return dict(self._class_names)

    @property
    def declared_synonyms(self) -> dict[str, list[str]]:
        """``synonyms`` as the card declares them, entries for unknown classes included (for
        `dermkit data check`); :attr:`synonyms` is the per-class view."""
        return {c: list(v) for c, v in self._synonyms.items()}

    def class_index(self, diagnosis: str) -> int:
        """Index of ``diagnosis`` in :attr:`classes`; DataError listing the classes if unknown."""
        classes = self.classes
        if diagnosis in classes:
            return classes.index(diagnosis)
        raise DataError(
            f"unknown diagnosis {diagnosis!r} for dataset {self.name}; known classes: "
            f"{', '.join(classes)}{self.did_you_mean(diagnosis)}"
        )

    def match_class(self, text: str) -> str | None:
        """Class whose name, readable name or synonym equals ``text`` (case-insensitive), or None."""
        key = str(text).strip().casefold()
        for cls in self.classes:
            names = [cls, self.class_names[cls], *self.synonyms[cls]]
            if any(key == n.casefold() for n in names):
                return cls
        return None

    def did_you_mean(self, value: str) -> str:
        """``" (did you mean 'mel'?)"`` naming the class ``value`` matches by name or synonym (see
        :meth:`match_class`) or else the closest class name; empty when none is close."""
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
    def rows(self, split: str, keep_excluded: bool = False) -> pd.DataFrame:
        """Rows of one split with the original index and a ``csv_line`` column (header = 1), without
        the rows of the exclusion list unless ``keep_excluded`` (the full split, for comparing the
        full and the cleaned split: :meth:`is_excluded` marks them)."""
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
        left_out = self.excluded_rows
        if len(left_out) and not keep_excluded:
            self._report_exclusions()
            kept = df[~df.index.isin(left_out.index)]
            if kept.empty:
                raise DataError(
                    f"split {split!r} of dataset {self.name}: all {len(df)} rows are listed in the exclusion "
                    f"list {self.exclude_csv}; remove some lines from it or re-split"
                )
            df = kept
        df["csv_line"] = np.asarray(df.index, dtype=np.int64) + 2
        return df

    # ------------------------------------------------------------- exclusions
    @property
    def exclude_csv(self) -> Path | None:
        """The exclusion list named by ``exclude:`` (checked to stay inside :attr:`root`), or None."""
        if self.exclude is None:
            return None
        rel = str(self.exclude).strip()
        text = rel.replace("\\", "/")
        where = self._card_file()
        if not text or text.startswith("/") or (len(text) >= 2 and text[1] == ":") or os.path.isabs(rel):
            raise DataError(f"{where}: 'exclude: {rel}' must be a path relative to the dataset folder {self.root} "
                            "(e.g. exclude: audit/excluded.csv)")
        parts = os.path.normpath(text).split(os.sep)
        if parts[0] == "..":
            raise DataError(f"{where}: 'exclude: {rel}' leaves the dataset folder {self.root} through '..'; keep "
                            "the exclusion list inside the folder")
        path = self.root / text
        if not self._follow_symlinks:
            real, root = os.path.realpath(path), os.path.realpath(self.root)
            if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
                raise DataError(f"{where}: 'exclude: {rel}' leads out of the dataset folder {self.root} through a "
                                f"symlink (to {real}); keep the exclusion list inside the folder")
        return path

    def _card_file(self) -> str:
        return next((s for s in self.sources if s.endswith("dataset.yaml")), str(self.root / "dataset.yaml"))

    @property
    def exclusions(self) -> pd.DataFrame:
        """The exclusion list as read: columns image, reason, line (its line in the CSV, header =
        1); empty without ``exclude:``. DataError naming the file (and line) when it is missing,
        unreadable, has no ``image`` column, an empty image cell or an image not in metadata.csv."""
        if self._exclusions is None:
            self._exclusions = self._read_exclusions()
        return self._exclusions

    def _read_exclusions(self) -> pd.DataFrame:
        empty = pd.DataFrame({"image": pd.Series(dtype=object), "reason": pd.Series(dtype=object),
                              "line": pd.Series(dtype=np.int64)})
        path = self.exclude_csv
        if path is None:
            return empty
        fix = "a CSV with the header image,reason and one excluded image per line"
        if not path.is_file():
            raise DataError(f"{path} (exclude: in {self._card_file()}) does not exist; write {fix}, or remove the "
                            "'exclude' key")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
        except pd.errors.EmptyDataError:
            raise DataError(f"{path} line 1: the file is empty; write {fix}") from None
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the exclusion list ({str(exc).strip()}); write {fix}") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        if "image" not in frame.columns:
            raise DataError(f"{path} line 1 (header): no 'image' column (columns: {', '.join(frame.columns)}); "
                            f"write {fix}")
        frame["line"] = np.arange(len(frame), dtype=np.int64) + 2
        frame = frame[(frame.drop(columns="line") != "").any(axis=1)]  # blank lines
        image = frame["image"].str.strip()
        reason = frame["reason"].str.strip() if "reason" in frame.columns else pd.Series("", index=frame.index)
        blank = image == ""
        if blank.any():
            raise DataError(f"{path} line {int(frame['line'][blank].iloc[0])}: empty 'image' cell; give the image "
                            "as in metadata.csv's image column, or delete the line")
        known = set(self.table["image"].dropna().astype(str).str.strip()) if "image" in self.table.columns else set()
        unknown = ~image.isin(known)
        if unknown.any():
            first = int(frame["line"][unknown].iloc[0])
            more = f" (and {int(unknown.sum()) - 1} more lines)" if unknown.sum() > 1 else ""
            raise DataError(f"{path} line {first}: image {image[unknown].iloc[0]!r} is not in {self.metadata_csv} "
                            f"(column 'image'){more}; fix the path or delete the line")
        out = pd.DataFrame({"image": image, "reason": reason.where(reason != "", "no reason given"),
                            "line": frame["line"]}).drop_duplicates("image").reset_index(drop=True)
        return out

    @property
    def excluded_rows(self) -> pd.Series:
        """Kind of reason (see :func:`reason_kind`) per row of :attr:`table` that the exclusion list
        leaves out, indexed like the table; empty without an exclusion list."""
        if self._excluded_rows is None:
            exclusions = self.exclusions
            if exclusions.empty:
                self._excluded_rows = pd.Series(dtype=object)
            else:
                kinds = dict(zip(exclusions["image"], exclusions["reason"].map(reason_kind)))
                images = self.table["image"].dropna().astype(str).str.strip()
                images = images[images.isin(kinds)]
                self._excluded_rows = images.map(kinds)
        return self._excluded_rows

    def is_excluded(self, images) -> np.ndarray:
        """One bool per image id: is it in the exclusion list?"""
        listed = set(self.exclusions["image"]) if self.exclude is not None else set()
        return np.array([str(image).strip() in listed for image in images], dtype=bool)

    @property
    def excluded(self) -> dict[str, int]:
        """Rows of metadata.csv the exclusion list leaves out, per kind of reason (most first);
        empty without one."""
        counts = self.excluded_rows.value_counts()
        return {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}

    def exclusion_note(self) -> str:
        """One line: how many rows the exclusion list leaves out and why; empty without one."""
        counts = self.excluded
        if not counts:
            return ""
        why = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        return (f"dataset {self.name}: {sum(counts.values())} of {len(self.table)} rows left out by the exclusion "
                f"list {self.exclude_csv} ({why})")

    def _report_exclusions(self) -> None:
        if not self._exclusions_reported:
            self._exclusions_reported = True
            warnings.warn(self.exclusion_note(), UserWarning, stacklevel=3)

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
                hint = self.did_you_mean(value)
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
            "exclude": self.exclude,
            **self.extra,
        }


def reason_kind(reason: str) -> str:
    """The kind of an exclusion reason: its text before the first ':', '(' or ' of '
    ("near-duplicate of X (cross-split)" -> "near-duplicate", "label issue: given ..." -> "label
    issue"); per-kind counts are :attr:`DatasetCard.excluded`."""
    kind = re.split(r"[:(]| of ", str(reason), maxsplit=1)[0].strip()
    return kind or "no reason given"


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
    spec, sources = folder_spec(folder)
    return DatasetCard(folder, spec, sources)
