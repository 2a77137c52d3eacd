"""Multi-view, multi-modal rows of a dataset card: image views, typed metadata, thickness targets.

A fusion model sees up to three modalities per case:

``derm``
    the dermoscopic image: the ``image`` column, unless the card's modality is ``clinical``;
``clin``
    the clinical (macroscopic) image: the card's ``second_view_column`` (Derm7pt ``clinic_image``),
    or the ``image`` column of a clinical dataset (PAD-UFES-20);
``meta``
    patient/lesion metadata: the card's typed ``metadata_columns`` minus columns that leak the
    label (:data:`LEAKY_COLUMNS`), encoded by :class:`MetadataEncoder` as numbers, or rendered as
    a text prompt (:func:`dermkit.data.captions.metadata_prompt`) for a text encoder.

:class:`MetadataEncoder` is fitted on the training split and saved as JSON in the model card:

- numeric: standardised with the train mean/sd, plus a missing indicator (a missing value gives
  0 *and* indicator 1, never a bare zero);
- categorical: one-hot over the train levels plus an explicit ``<missing>`` level and an
  ``<other>`` level for values never seen in training;
- boolean: 0/1 plus a missing indicator.

Missing means an empty cell, the card's ``missing_values`` (PAD-UFES-20 ``UNK``) or the usual
"unknown" markers (:func:`dermkit.values.is_unknown`). A value that cannot be parsed as its
declared type (``age = "old"``) is a :class:`~dermkit.errors.DataError` naming the CSV line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from dermkit.data.captions import metadata_prompt
from dermkit.data.card import DatasetCard
from dermkit.data.card_schema import BOOLEAN_FALSE, BOOLEAN_TRUE
from dermkit.data.metadata_csv import csv_lines
from dermkit.data.split import row_groups
from dermkit.errors import ConfigError, DataError
from dermkit.values import is_unknown

__all__ = [
    "MODALITIES",
    "LEAKY_COLUMNS",
    "MetadataEncoder",
    "MultiModalRows",
    "fusion_meta_columns",
    "view_columns",
    "view_paths",
    "parse_thickness",
    "thickness_target",
    "build_rows",
    "ORDINAL_BINS",
]

MODALITIES = ("derm", "clin", "meta")
#: Columns that are (or follow from) the label or the thickness target: never fusion inputs.
LEAKY_COLUMNS = frozenset({
    "label", "diagnosis", "diagnosis_name", "diagnosis_fine", "diagnosis_original", "malignant",
    "management", "biopsed", "dx_type", "thickness", "breslow_category", "breslow_ordinal",
})
#: Derm7pt's Breslow bins (``breslow_ordinal`` 0-3).
ORDINAL_BINS = ("in situ", "<0.76 mm", "0.76-1.5 mm", ">1.5 mm")
MISSING_LEVEL = "<missing>"
OTHER_LEVEL = "<other>"


def _is_leaky(column: str) -> bool:
    return column in LEAKY_COLUMNS or column.startswith("breslow") or column.startswith("diagnosis")


def fusion_meta_columns(card: DatasetCard, include: Sequence[str] | None = None,
                        exclude: Sequence[str] = ()) -> dict[str, str]:
    """Metadata columns (name -> type) a fusion model may read, in card order.

    Default: every typed metadata column of the card except those in :data:`LEAKY_COLUMNS` (and
    any ``breslow*``/``diagnosis*`` column). ``include`` picks columns explicitly (each must be a
    typed metadata column of the card and not leak the label); ``exclude`` drops more.
    """
    typed = card.metadata_columns
    if include:
        unknown = [c for c in include if c not in typed]
        if unknown:
            raise ConfigError(
                f"meta_columns {unknown} are not typed metadata columns of {card.name} "
                f"({', '.join(typed) or 'none'}); fix the names or declare them under metadata_columns "
                "in the dataset's dataset.yaml"
            )
        leaky = [c for c in include if _is_leaky(c)]
        if leaky:
            raise ConfigError(
                f"meta_columns {leaky} leak the label or the thickness target of {card.name}; remove them "
                "(a model that reads its answer from the inputs learns nothing useful)"
            )
        chosen = {c: typed[c] for c in include}
    else:
        chosen = {c: t for c, t in typed.items() if not _is_leaky(c)}
    bad_exclude = [c for c in exclude if c not in typed]
    if bad_exclude:
        raise ConfigError(f"meta_exclude {bad_exclude} are not metadata columns of {card.name} ({', '.join(typed)})")
    return {c: t for c, t in chosen.items() if c not in set(exclude)}


# ------------------------------------------------------------------------------ metadata encoding


@dataclass
class MetadataEncoder:
    """Typed metadata -> float features, fitted on train (see the module docstring).

    ``fields`` lists ``(column, type, width)`` in feature order: numeric and boolean fields take
    2 columns (value, missing indicator), categorical ones one per level. ``field_slices`` gives
    each field's column range (one fusion token per field).
    """

    columns: dict[str, str]
    missing_values: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- fitting
    @classmethod
    def fit(cls, rows: pd.DataFrame, columns: dict[str, str], missing_values: Sequence[str] = (),
            where: str = "metadata.csv") -> "MetadataEncoder":
        enc = cls(dict(columns), list(missing_values))
        for column, kind in columns.items():
            values = enc._parse(rows, column, kind, where)
            if kind == "numeric":
                present = values[~np.isnan(values)]
                mean = float(present.mean()) if present.size else 0.0
                std = float(present.std()) if present.size > 1 else 1.0
                enc.stats[column] = {"mean": mean, "std": std if std > 1e-12 else 1.0,
                                     "missing_rate": float(np.isnan(values).mean()) if len(values) else 0.0}
            elif kind == "boolean":
                enc.stats[column] = {"missing_rate": float(np.isnan(values).mean()) if len(values) else 0.0}
            else:
                levels = sorted({v for v in values if v is not None})
                missing_rate = float(np.mean([v is None for v in values])) if len(values) else 0.0
                enc.stats[column] = {"levels": levels, "missing_rate": missing_rate}
        return enc

    def _parse(self, rows: pd.DataFrame, column: str, kind: str, where: str, row_name: str = "line"):
        """Column values: floats with NaN for missing (numeric/boolean), or str/None (categorical)."""
        missing = self.missing_values
        if column not in rows.columns:
            # A dataset without the column (another hospital's export): every value is missing.
            return np.full(len(rows), np.nan) if kind != "categorical" else [None] * len(rows)
        raw = rows[column].tolist()
        if kind == "categorical":
            return [None if is_unknown(v, missing) else str(v).strip() for v in raw]
        out = np.full(len(raw), np.nan)
        for i, v in enumerate(raw):
            if is_unknown(v, missing):
                continue
            text = str(v).strip()
            if kind == "boolean":
                key = text.casefold()
                if key in BOOLEAN_TRUE:
                    out[i] = 1.0
                elif key in BOOLEAN_FALSE:
                    out[i] = 0.0
                else:
                    self._bad(rows, i, column, text, kind, "true/false, yes/no or 1/0", where, row_name)
            else:
                try:
                    number = float(text)
                except ValueError:
                    number = math.nan
                if not math.isfinite(number):
                    self._bad(rows, i, column, text, kind, "a number", where, row_name)
                out[i] = number
        return out

    @staticmethod
    def _bad(rows, i, column, text, kind, expected, where, row_name="line"):
        line = int(csv_lines(rows).iloc[i])
        raise DataError(
            f"{where} {row_name} {line}: column {column!r} is declared {kind} but holds {text!r}; expected "
            f"{expected}. Fix the value, leave the cell empty for 'unknown', "
            f"or change the column's type under metadata_columns in dataset.yaml"
        )

    # -- layout
    @property
    def fields(self) -> list[tuple[str, str, int]]:
        out = []
        for column, kind in self.columns.items():
            width = len(self.stats[column]["levels"]) + 2 if kind == "categorical" else 2
            out.append((column, kind, width))
        return out

    @property
    def field_widths(self) -> list[int]:
        return [w for _, _, w in self.fields]

    @property
    def dim(self) -> int:
        return int(sum(self.field_widths))

    @property
    def feature_names(self) -> list[str]:
        names = []
        for column, kind, _ in self.fields:
            if kind == "categorical":
                names += [f"{column}={lvl}" for lvl in self.stats[column]["levels"]]
                names += [f"{column}={MISSING_LEVEL}", f"{column}={OTHER_LEVEL}"]
            else:
                names += [column, f"{column}:missing"]
        return names

    # -- transforming
    def transform(self, rows: pd.DataFrame, where: str = "metadata.csv", row_name: str = "line") -> np.ndarray:
        """(N, dim) float32 features for ``rows`` (columns the table lacks count as missing).

        ``where``/``row_name`` name the source in error messages ("metadata.csv line 12").
        """
        blocks = []
        for column, kind, width in self.fields:
            values = self._parse(rows, column, kind, where, row_name)
            block = np.zeros((len(rows), width), dtype=np.float32)
            if kind == "categorical":
                index = {lvl: j for j, lvl in enumerate(self.stats[column]["levels"])}
                for i, v in enumerate(values):
                    block[i, width - 2 if v is None else index.get(v, width - 1)] = 1.0
            else:
                miss = np.isnan(values)
                if kind == "numeric":
                    st = self.stats[column]
                    block[:, 0] = np.where(miss, 0.0, (values - st["mean"]) / st["std"])
                else:
                    block[:, 0] = np.where(miss, 0.0, values)
                block[:, 1] = miss.astype(np.float32)
            blocks.append(block)
        if not blocks:
            return np.zeros((len(rows), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1)

    def prompts(self, rows: pd.DataFrame, card: DatasetCard) -> list[str]:
        """One text prompt per row from the same columns (see :func:`metadata_prompt`)."""
        return [metadata_prompt(row, card, self.columns) for _, row in rows.iterrows()]

    # -- persistence
    def to_dict(self) -> dict:
        return {"columns": self.columns, "missing_values": self.missing_values, "stats": self.stats}

    @classmethod
    def from_dict(cls, data: dict) -> "MetadataEncoder":
        try:
            return cls(dict(data["columns"]), list(data.get("missing_values", [])), dict(data["stats"]))
        except (KeyError, TypeError) as exc:
            raise DataError(f"invalid metadata encoder in the model card ({exc}); re-train the model") from exc


# ------------------------------------------------------------------------------ views


def view_columns(card: DatasetCard) -> dict[str, str | None]:
    """Image column per image modality (``None`` = the dataset has no such view)."""
    if card.modality == "clinical":
        return {"derm": None, "clin": "image"}
    return {"derm": "image", "clin": card.second_view_column}


def view_paths(card: DatasetCard, rows: pd.DataFrame, modality: str) -> list[Path | None]:
    """Path of each row's image of ``modality`` (``None`` where the row has none).

    A Derm7pt case whose clinical picture is a copy of the dermoscopic one
    (``clinic_is_derm_copy`` = 1) has no clinical view: it is masked, not passed off as clinical.
    """
    column = view_columns(card)[modality]
    if column is None:
        raise ConfigError(
            f"dataset {card.name} has no {'dermoscopic' if modality == 'derm' else 'clinical'} image "
            f"(modality {card.modality!r}, second_view_column {card.second_view_column!r}); set "
            f"use_{'derm' if modality == 'derm' else 'clinical'}: false, or declare the column in dataset.yaml"
        )
    if column not in rows.columns:
        raise DataError(f"{card.metadata_csv}: no column {column!r} (the card's {modality} view); add it "
                        "or fix second_view_column in dataset.yaml")
    copies = None
    if modality == "clin" and column != "image" and "clinic_is_derm_copy" in rows.columns:
        copies = rows["clinic_is_derm_copy"].astype(str).str.strip().str.casefold().isin(BOOLEAN_TRUE).to_numpy()
    out: list[Path | None] = []
    for i, rel in enumerate(rows[column].tolist()):
        if is_unknown(rel) or (copies is not None and copies[i]):
            out.append(None)
        else:
            out.append(card.image_path(str(rel)))
    return out


# ------------------------------------------------------------------------------ thickness


def parse_thickness(card: DatasetCard, rows: pd.DataFrame, column: str, kind: str) -> np.ndarray:
    """``rows[column]`` as thickness targets: mm (``regression``, >= 0) or a Breslow bin
    (``ordinal``, integer 0-3); empty cells are NaN (no target); anything else is a DataError
    naming the CSV line."""
    values = np.full(len(rows), np.nan)
    raw = rows[column].tolist() if column in rows.columns else [None] * len(rows)
    for i, v in enumerate(raw):
        if is_unknown(v):
            continue
        try:
            number = float(str(v).strip())
        except ValueError:
            number = math.nan
        valid = math.isfinite(number) and number >= 0
        if kind == "ordinal":
            valid = valid and number == int(number) and int(number) < len(ORDINAL_BINS)
        if not valid:
            line = int(csv_lines(rows).iloc[i])
            want = ("a thickness in mm (>= 0)" if kind == "regression"
                    else f"an integer bin 0-{len(ORDINAL_BINS) - 1} ({', '.join(ORDINAL_BINS)})")
            raise DataError(f"{card.metadata_csv} line {line}: {column} = {v!r}; expected {want}, "
                            "or an empty cell where there is none")
        values[i] = number
    return values


def thickness_target(card: DatasetCard, rows: pd.DataFrame) -> tuple[str | None, np.ndarray]:
    """``(kind, values)``: ``("regression", mm)`` from a ``thickness`` column, else
    ``("ordinal", bin 0-3)`` from ``breslow_ordinal``, else ``(None, all NaN)``. NaN = no target."""
    for column, kind in (("thickness", "regression"), ("breslow_ordinal", "ordinal")):
        if column in card.table.columns:
            return kind, parse_thickness(card, rows, column, kind)
    return None, np.full(len(rows), np.nan)


# ------------------------------------------------------------------------------ one split


@dataclass
class MultiModalRows:
    """Everything a fusion model needs of one split, except image features."""

    rows: pd.DataFrame
    labels: np.ndarray | None  # class indices (None when the rows have no diagnosis)
    views: dict[str, list[Path | None]]  # image modality -> paths (None = missing view)
    meta: np.ndarray | None  # (N, dim) encoded metadata
    prompts: list[str] | None  # metadata as text
    thickness_kind: str | None
    thickness: np.ndarray  # NaN = no target

    def __len__(self) -> int:
        return len(self.rows)

    def groups(self, card: DatasetCard) -> list[str] | None:
        return row_groups(self.rows, card.group_column)


def build_rows(card: DatasetCard, split: str | pd.DataFrame, image_modalities: Sequence[str],
               meta_encoder: MetadataEncoder | None, with_prompts: bool = False,
               with_labels: bool = True) -> MultiModalRows:
    """The modalities of one split (or a given rows frame) of ``card``."""
    rows = card.rows(split) if isinstance(split, str) else split
    labels = card.labels(rows) if with_labels else None
    views = {m: view_paths(card, rows, m) for m in image_modalities}
    meta = prompts = None
    if meta_encoder is not None:
        meta = meta_encoder.transform(rows, where=str(card.metadata_csv))
        if with_prompts:
            prompts = meta_encoder.prompts(rows, card)
    kind, values = thickness_target(card, rows)
    return MultiModalRows(rows, labels, views, meta, prompts, kind, values)
