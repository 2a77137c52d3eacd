"""Train/val/test splits that are stratified by class and never split a lesion or patient.

``make_splits`` is a greedy grouped assignment: per class, groups (largest first, ties in seeded
random order) go to the split furthest below its target number of images; the last groups are
kept for splits that are still empty. It is deterministic for a seed, honours the fractions to
within a group's size, and puts each class in every split as soon as the class has one group
per split. ``write_split`` adds the result to a dataset's metadata.csv; its groups join a
lesion's rows, rows declared as copies and rows whose images are near-duplicates (perceptual
hashes), so no picture ends up in two splits.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from dermkit.data.card import DatasetCard, load_card
from dermkit.data.card_schema import SPLITS
from dermkit.data.metadata_csv import csv_lines
from dermkit.data.near_duplicates import row_links
from dermkit.errors import ConfigError, DataError
from dermkit.io import write_csv

__all__ = ["make_splits", "write_split", "effective_groups", "row_groups", "DEFAULT_FRACTIONS"]

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    try:
        fr = np.asarray([float(f) for f in fractions], dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from None
    if fr.shape != (3,) or not np.all(np.isfinite(fr)) or np.any(fr < 0) or abs(fr.sum() - 1) > 1e-6:
        raise ConfigError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, got "
            f"{tuple(fractions)!r}; e.g. (0.7, 0.15, 0.15)"
        )
    return fr


def _values(df: pd.DataFrame, spec, what: str) -> pd.Series | None:
    """A column of ``df`` named by ``spec``, or ``spec`` itself as values aligned with ``df``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in df.columns:
            raise DataError(
                f"cannot {what} by {spec!r}: no such column (columns: {', '.join(map(str, df.columns))})"
            )
        return df[spec]
    if isinstance(spec, pd.Series):
        if not spec.index.equals(df.index):
            raise DataError(f"{what} values must have the same index as the table")
        return spec
    values = np.asarray(spec, dtype=object)
    if values.shape != (len(df),):
        raise DataError(f"{what} values have shape {values.shape} but the table has {len(df)} rows")
    return pd.Series(values, index=df.index)


def make_splits(
    df: pd.DataFrame,
    stratify: str | Sequence | None = "diagnosis",
    group: str | Sequence | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> pd.Series:
    """Assign every row of ``df`` to "train"/"val"/"test"; returns a Series aligned with ``df.index``.

    ``stratify`` and ``group`` are column names (or arrays aligned with ``df``). Rows sharing a
    group value always share a split; a group whose rows have several classes is placed with its
    most frequent class. Rows with an empty group value are their own group. A class with fewer
    groups than (non-empty) splits cannot be spread: it goes to the largest split (train) with
    a warning.
    """
    fr = _check_fractions(fractions)
    if len(df) == 0:
        raise DataError("cannot split an empty table")
    strata = _values(df, stratify, "stratify")
    if strata is None:
        strata = pd.Series("", index=df.index)
    elif strata.isna().any():
        lines = csv_lines(df)[strata.isna().to_numpy()]
        raise DataError(
            f"cannot stratify: empty {stratify if isinstance(stratify, str) else 'class'} value at "
            f"metadata.csv line(s) {', '.join(map(str, lines.iloc[:8]))}; fill them in or drop "
            "those rows"
        )
    groups = _values(df, group, "group")
    positions = np.arange(len(df))
    if groups is None:
        keys = np.array([f"row:{i}" for i in positions], dtype=object)
    else:
        # Empty group ids must not merge unrelated rows into one big group.
        keys = np.array(
            [f"row:{i}" if pd.isna(g) else f"g:{g}" for i, g in zip(positions, groups.to_numpy())],
            dtype=object,
        )
    strata_arr = strata.astype(str).to_numpy()

    frame = pd.DataFrame({"key": keys, "stratum": strata_arr})
    # Each group joins the stratum of its most frequent class (ties: alphabetical).
    counts = frame.groupby(["key", "stratum"]).size().reset_index(name="n")
    counts = counts.sort_values(["key", "n", "stratum"], ascending=[True, False, True], kind="stable")
    group_stratum = counts.drop_duplicates("key").set_index("key")["stratum"]
    group_size = frame.groupby("key").size()

    active = np.flatnonzero(fr > 0)
    fallback = int(np.argmax(fr))
    rng = np.random.default_rng(seed)
    assignment: dict[str, int] = {}
    small = []
    for stratum in sorted(group_stratum.unique()):
        members = np.array(sorted(group_stratum.index[group_stratum == stratum]), dtype=object)
        sizes = group_size.loc[members].to_numpy()
        if len(members) < len(active):
            small.append(f"{stratum!r} ({len(members)} group{'s' if len(members) != 1 else ''})")
            for key in members:
                assignment[key] = fallback
            continue
        order = rng.permutation(len(members))
        order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, random ties
        target = fr * sizes.sum()
        filled = np.zeros(3)
        used = np.zeros(3, dtype=bool)
        for rank, i in enumerate(order):
            deficit = np.full(3, -np.inf)
            deficit[active] = target[active] - filled[active]
            empty = [s for s in active if not used[s]]
            if empty and len(order) - rank <= len(empty):
                # Just enough groups left to give every split one: the class must appear in
                # each split (the remaining groups are the smallest, so little overshoot).
                s = max(empty, key=lambda k: deficit[k])
            else:
                s = int(np.argmax(deficit))  # the split furthest below its target size
            assignment[members[i]] = s
            filled[s] += sizes[i]
            used[s] = True
    if small:
        warnings.warn(
            f"classes with fewer groups than splits were put in {SPLITS[fallback]} only: "
            f"{', '.join(small)}; they will be missing from the other splits",
            UserWarning,
            stacklevel=2,
        )
    names = np.array(SPLITS, dtype=object)
    return pd.Series(names[[assignment[k] for k in keys]], index=df.index, name="split")


def row_groups(rows: pd.DataFrame, group_column: str | None, id_column: str = "image") -> list[str] | None:
    """Lesion/patient id per row for the grouped bootstrap; a row without an id is its own group.

    The one rule for every method's predictions: rows are never pooled into a shared "nan" group.
    """
    if not group_column or group_column not in rows.columns:
        return None
    col = rows[group_column]
    return col.where(col.notna(), rows[id_column]).astype(str).tolist()


def effective_groups(
    table: pd.DataFrame,
    group_column: str | None = None,
    duplicate_column: str | None = None,
    id_column: str | None = None,
    links: Iterable[Sequence[int]] = (),
) -> pd.Series:
    """Group key per row: ``group_column`` joined with rows declared identical in ``duplicate_column``
    and with the row pairs in ``links``.

    ``duplicate_column`` lists ids (of ``id_column``, else of ``image``) of identical copies,
    separated by ``;``/``,``/spaces. ``links``: pairs ``(i, j, ...)`` of row *positions* that show
    one picture (e.g. :func:`dermkit.data.near_duplicates.row_links`). Linked rows get one key
    (``group:<first row of the cluster>``) so a split never separates copies; without links and
    declared copies the keys are the group column's.
    """
    n = len(table)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    if group_column is not None:
        first: dict = {}
        for pos, value in enumerate(table[group_column].to_numpy()):
            if pd.notna(value):
                union(pos, first.setdefault(value, pos))
    if duplicate_column is not None and duplicate_column in table.columns:
        ids = table[id_column] if id_column and id_column in table.columns else table["image"]
        where: dict[str, list[int]] = {}
        for pos, value in enumerate(ids.to_numpy()):
            if pd.notna(value):
                where.setdefault(str(value), []).append(pos)
        for pos, value in enumerate(table[duplicate_column].to_numpy()):
            if pd.isna(value):
                continue
            for other in filter(None, re.split(r"[;,|\s]+", str(value))):
                for j in where.get(other, []):
                    union(pos, j)
    for link in links:
        union(int(link[0]), int(link[1]))
    return pd.Series([f"group:{find(i)}" for i in range(n)], index=table.index, name="group")


def write_split(
    card_or_path: DatasetCard | str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    group: str | None | bool = None,
    force: bool = False,
    near_duplicates: bool = True,
    threads: int = 4,
) -> Path:
    """Add or replace the ``split`` column of a dataset's metadata.csv (written atomically).

    ``group`` None uses the card's ``group_column``; ``"none"`` (or False) disables grouping.
    Rows named as copies of each other in the card's ``duplicate_column`` always share a split,
    and so (with ``near_duplicates``) do rows whose images are near-duplicates (perceptual hashes,
    :func:`dermkit.data.near_duplicates.row_links`, read in ``threads`` threads; images that are
    missing or unreadable are left out): a cluster of them is one group, like a lesion. A table
    without near-duplicates gets the same split as with ``near_duplicates=False``.
    An existing non-empty split column is only replaced with ``force=True``. ``out_csv``
    writes the result to another file instead of the dataset's metadata.csv. Returns the path.
    """
    card = load_card(card_or_path)
    table = card.table.copy()
    if "diagnosis" not in table.columns:
        raise DataError(f"{card.metadata_csv}: no 'diagnosis' column to stratify the split by; add it first")
    if "split" in table.columns and table["split"].notna().any() and not force:
        counts = ", ".join(f"{k} {v}" for k, v in table["split"].value_counts().items())
        raise DataError(
            f"{card.metadata_csv} already has a split column ({counts}); refusing to overwrite "
            "it. Pass force=True (CLI: --force) to replace it, or remove the column first"
        )
    if group is None:
        group_col = card.group_column
    elif group is False or (isinstance(group, str) and group.strip().lower() in ("", "none")):
        group_col = None
    else:
        group_col = str(group)
    if group_col is not None and group_col not in table.columns:
        raise DataError(
            f"{card.metadata_csv} has no group column {group_col!r}; pass an existing column "
            "as group, or group='none' to split images independently"
        )
    links = []
    if near_duplicates and "image" in table.columns:
        columns = ["image"] + ([card.second_view_column] if card.second_view_column else [])
        links = row_links(table, card.root, columns, follow_symlinks=card.follow_symlinks, threads=threads)
    groups = effective_groups(table, group_col, card.duplicate_column, card.id_column, links)
    table["split"] = make_splits(table, "diagnosis", groups, fractions=fractions, seed=seed)
    out = Path(out_csv) if out_csv is not None else card.metadata_csv
    write_csv(out, table)
    if out.resolve() == card.metadata_csv.resolve():
        card.reload()
    return out
