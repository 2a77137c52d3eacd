"""Validate a dataset folder: every problem with its metadata.csv line and a fix.

``check_dataset`` collects *all* problems instead of stopping at the first, so one run tells the
user everything to fix. Problems are data (``Problem``); ``CheckResult`` formats them (capped per
kind so 8,000 missing images do not flood the terminal), raises them, or saves them as files.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import posixpath
import re
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dermkit.data.card import DatasetCard, load_card
from dermkit.data.card_schema import BOOLEAN_FALSE, BOOLEAN_TRUE, REQUIRED_COLUMNS, SPLITS
from dermkit.data.hashes import HASH_BITS, hash_pairs
from dermkit.data.images import (
    FOLLOW_SYMLINKS_HINT,
    IMAGE_FIXES,
    ImageProblem,
    PathResolver,
    SymlinkEscape,
    decode_image_bytes,
    read_image_bytes,
)
from dermkit.data.metadata_csv import DELIMITER_NAMES, line_list
from dermkit.data.near_duplicates import image_hash
from dermkit.data.split import effective_groups
from dermkit.errors import DataError
from dermkit.io import write_csv, write_json
from dermkit.values import spelling_difference, spelling_key

__all__ = ["Problem", "CheckResult", "check_dataset", "SMALL_CLASS", "SPARSE_FRACTION"]

SMALL_CLASS = 5  # fewer images of a class in a split than this -> warning (metrics too noisy)
SPARSE_FRACTION = 0.5  # metadata column missing in more than this fraction of rows -> warning
THREADS = 4
_CHUNK = 32  # images per thread-pool task
_LIST_LINES = 8  # line numbers quoted inside one message


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset; ``csv_line`` counts the header as line 1."""

    kind: str
    message: str
    fix: str
    csv_line: int | None = None
    column: str | None = None
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.severity}: {self.message} -> fix: {self.fix}"


@dataclass
class CheckResult:
    """Everything ``check_dataset`` found, plus per-class counts and metadata coverage."""

    name: str
    root: Path
    problems: list[Problem]
    summary: pd.DataFrame
    metadata_coverage: pd.DataFrame
    images_checked: int = 0
    seconds: float = 0.0
    checked_images: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings are allowed)."""
        return not self.errors

    def counts(self) -> dict[str, int]:
        """Number of problems per kind."""
        out: dict[str, int] = defaultdict(int)
        for p in self.problems:
            out[p.kind] += 1
        return dict(out)

    def format(self, max_per_kind: int = 10, include_warnings: bool = True) -> str:
        """Human-readable report: problems grouped by kind, at most ``max_per_kind`` each."""
        lines = [
            f"dataset {self.name} ({self.root}): {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings"
            + (f", {self.images_checked} images decoded in {self.seconds:.1f} s" if self.checked_images else "")
        ]
        for severity in ("error", "warning"):
            if severity == "warning" and not include_warnings:
                continue
            by_kind: dict[str, list[Problem]] = defaultdict(list)
            for p in self.problems:
                if p.severity == severity:
                    by_kind[p.kind].append(p)
            for kind, items in by_kind.items():
                lines.append(f"{severity.upper()} {kind} ({len(items)}):")
                fixes = {p.fix for p in items}
                for p in items[:max_per_kind]:
                    lines.append(f"  - {p.message}")
                    if len(fixes) > 1:
                        lines.append(f"    fix: {p.fix}")
                if len(items) > max_per_kind:
                    lines.append(f"  ... and {len(items) - max_per_kind} more")
                if len(fixes) == 1:
                    lines.append(f"  fix: {items[0].fix}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def raise_if_errors(self, max_per_kind: int = 10) -> "CheckResult":
        """Raise a DataError listing the errors (capped per kind); return self when ok."""
        if not self.ok:
            raise DataError(self.format(max_per_kind=max_per_kind, include_warnings=False))
        return self

    def problems_frame(self) -> pd.DataFrame:
        """One row per problem (severity, kind, csv_line, column, message, fix)."""
        cols = ["severity", "kind", "csv_line", "column", "message", "fix"]
        return pd.DataFrame([asdict(p) for p in self.problems], columns=cols)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "root": str(self.root),
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "counts": self.counts(),
            "images_checked": self.images_checked,
            "seconds": round(self.seconds, 3),
            "summary": self.summary.reset_index().to_dict(orient="records"),
            "metadata_coverage": self.metadata_coverage.to_dict(orient="records"),
            "problems": [asdict(p) for p in self.problems],
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write check.json, problems.csv, summary.csv and metadata_coverage.csv (atomically)."""
        out = Path(out_dir)
        write_json(out / "check.json", self.to_dict())
        write_csv(out / "problems.csv", self.problems_frame())
        write_csv(out / "summary.csv", self.summary.reset_index())
        write_csv(out / "metadata_coverage.csv", self.metadata_coverage)
        return out


# ---------------------------------------------------------------------------------- helpers
def _norm_rel(rel: str) -> str:
    return posixpath.normpath(rel.replace("\\", "/"))


class _Checker:
    """State shared by the individual checks of one ``check_dataset`` call."""

    def __init__(self, card: DatasetCard, follow_symlinks: bool | None = None):
        self.card = card
        self.follow_symlinks = card.follow_symlinks if follow_symlinks is None else bool(follow_symlinks)
        self.csv = card.metadata_csv.name
        self.table = card.table
        self.line = pd.Series(np.arange(len(self.table)) + 2, index=self.table.index)
        self.problems: list[Problem] = []

    def add(self, kind, message, fix, csv_line=None, column=None, severity="error"):
        self.problems.append(
            Problem(kind, message, fix, None if csv_line is None else int(csv_line), column, severity)
        )

    def at(self, idx, column: str | None = None) -> str:
        where = f"{self.csv} line {int(self.line[idx])}"
        return where if column is None else f"{where}, column '{column}'"

    # ---------------------------------------------------------------------- the file itself
    def file_format(self):
        delimiter = self.card.csv_delimiter
        if delimiter != ",":
            name = DELIMITER_NAMES.get(delimiter, repr(delimiter))
            self.add(
                "csv_delimiter",
                f"{self.csv} is {name}-separated; read with {delimiter!r} (detected from the header, line 1)",
                "nothing to do; save it comma-separated if other tools must read it "
                "(`dermkit data split` rewrites it comma-separated)",
                csv_line=1,
                severity="warning",
            )

    def no_rows(self) -> bool:
        if len(self.table):
            return False
        self.add(
            "no_rows",
            f"{self.csv} line 2: no rows after the header (line 1); the dataset has no images",
            "add one row per image below the header (image,diagnosis,split,...)",
            csv_line=2,
        )
        return True

    # ------------------------------------------------------------------ columns and values
    def required_columns(self):
        cols = list(self.table.columns)
        for col in REQUIRED_COLUMNS:
            if col not in cols:
                self.add(
                    "missing_column",
                    f"{self.csv} line 1 (header): no '{col}' column (columns: {', '.join(cols) or 'none'})",
                    _REQUIRED_FIX[col],
                    csv_line=1,
                    column=col,
                )

    def missing_values(self, col: str):
        tokens = self.card.missing_tokens.get(col, pd.Series(dtype=object))
        for idx in self.table.index[self.table[col].isna()]:
            token = tokens.get(idx)
            self.add(
                "missing_value",
                f"{self.at(idx, col)}: '{col}' is empty"
                + (f" ({token!r} means missing)" if token is not None else ""),
                f"fill in '{col}' on that line or delete the row",
                self.line[idx],
                col,
            )

    def spelling_variants(self) -> list[str]:
        """Diagnoses that differ only by case/spacing, when the card lists no classes: one error
        per class name. Returns the class list to check the rest with (the most frequent
        spelling of each name), so the variant rows are not reported again as unknown."""
        variants = self.card.spelling_variants()
        for spellings in variants:
            first = min(line for lines in list(spellings.values())[1:] for line in lines)
            self.add(
                "case_variant",
                self.card.variants_message(spellings).replace(f"{self.card.metadata_csv}", self.csv, 1),
                f"write {next(iter(spellings))!r} on every line (or the spelling you prefer), or list "
                "the classes in dataset.yaml (classes: [...])",
                first,
                "diagnosis",
            )
        keys = {spelling_key(next(iter(v))) for v in variants}
        classes = [c for c in self.card.table_classes() if spelling_key(c) not in keys]
        return sorted(classes + [next(iter(v)) for v in variants])

    def card_consistency(self, classes):
        card = self.card
        where = " + ".join(card.sources) or "the card"
        if card.positive_class is not None and card.positive_class not in classes:
            self.add(
                "card",
                f"positive_class {card.positive_class!r} ({where}) is not one of the classes "
                f"({', '.join(classes)})",
                "set positive_class in dataset.yaml to one of the classes, or remove it",
                column="positive_class",
            )
        for key, values in (("class_names", card.declared_class_names), ("synonyms", card.declared_synonyms)):
            unknown = [k for k in values if k not in classes]
            if unknown:
                self.add(
                    "card",
                    f"{key} ({where}) names {', '.join(map(repr, unknown))}, not in the classes "
                    f"({', '.join(classes)})",
                    f"fix the spelling in {key} or add the class to 'classes' in dataset.yaml",
                    column=key,
                )

    def diagnoses(self, classes, case_reported: bool = False) -> pd.Series:
        """Report unknown diagnoses; return the class index per row (NaN when unknown/empty).

        ``case_reported``: spellings that differ from a class only by case were already reported
        (:meth:`spelling_variants`), so they are skipped here."""
        index = {c: i for i, c in enumerate(classes)}
        diag = self.table["diagnosis"]
        codes = diag.map(index)
        unknown = codes.isna() & diag.notna()
        by_key = {spelling_key(c): c for c in classes}
        for idx in self.table.index[unknown]:
            value = diag[idx]
            match = by_key.get(spelling_key(value))
            if match is not None:
                if case_reported:
                    continue
                what = spelling_difference(value, match)
                self.add(
                    "case_variant",
                    f"{self.at(idx, 'diagnosis')}: diagnosis {value!r} differs only by {what} from "
                    f"the class {match!r}",
                    f"write {match!r} exactly as in the class list (classes: "
                    f"{', '.join(classes)}); class names are case-sensitive",
                    self.line[idx],
                    "diagnosis",
                )
                continue
            self.add(
                "unknown_diagnosis",
                f"{self.at(idx, 'diagnosis')}: unknown diagnosis {value!r}{self.card.did_you_mean(value)}; known "
                f"classes: {', '.join(classes)}",
                "use one of the known classes (exact spelling and case), or add the class to "
                "'classes' in dataset.yaml",
                self.line[idx],
                "diagnosis",
            )
        return codes

    def labels(self, codes: pd.Series, classes):
        raw = self.table["label"]
        numbers = pd.to_numeric(raw, errors="coerce")
        known = codes.notna()
        agree = known & numbers.notna() & (numbers == codes)
        for idx in self.table.index[known & ~agree]:
            want = int(codes[idx])
            value, number = raw[idx], numbers[idx]
            if pd.isna(value):
                detail = "label is empty"
            elif pd.isna(number) or float(number) != int(number):
                detail = f"label {value!r} is not an integer"
            else:
                got = int(number)
                name = classes[got] if 0 <= got < len(classes) else "no class"
                detail = f"label {got} ({name}) disagrees with diagnosis"
            self.add(
                "label_mismatch",
                f"{self.at(idx, 'label')}: {detail} {self.table['diagnosis'][idx]!r}, which is class {want}",
                f"set label to {want} (index of the diagnosis in classes: "
                f"{', '.join(f'{i}={c}' for i, c in enumerate(classes))}) or delete the label "
                "column (it is derived from diagnosis)",
                self.line[idx],
                "label",
            )

    def splits(self):
        split = self.table["split"]
        bad = split.notna() & ~split.isin(SPLITS)
        for idx in self.table.index[bad]:
            self.add(
                "invalid_split",
                f"{self.at(idx, 'split')}: split {split[idx]!r} is not train, val or test",
                "use train, val or test (lower case, no spaces); `dermkit data split --force` "
                "re-creates the split column",
                self.line[idx],
                "split",
            )
        counts = split.value_counts()
        for name in SPLITS:
            if counts.get(name, 0) == 0:
                found = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
                self.add(
                    "empty_split",
                    f"split {name!r} has no rows (rows per split: {found}); training needs "
                    "train, val and test",
                    f"assign some rows to {name!r} in {self.csv}, or re-split with "
                    "`dermkit data split --force` (dermkit.data.write_split)",
                    column="split",
                )

    def duplicate_rows(self):
        images = self.table["image"].dropna().map(_norm_rel)
        dup = images[images.duplicated(keep=False)]
        for rel, idxs in dup.groupby(dup, sort=False).groups.items():
            lines = [self.line[i] for i in idxs]
            self.add(
                "duplicate_row",
                f"{self.csv} {line_list(lines, _LIST_LINES)}: image {rel!r} is listed {len(lines)} times",
                "keep one row per image (delete the repeated rows)",
                lines[1],
                "image",
            )

    # --------------------------------------------------------------------------- paths
    def paths(self) -> dict[tuple, Path]:
        """Resolve image paths safely; report unsafe ones. Returns (index, column) -> path."""
        out = {}
        cols = ["image"]
        view = self.card.second_view_column
        if view and view in self.table.columns:
            cols.append(view)
        elif view:
            self.add(
                "missing_column",
                f"{self.csv} line 1 (header): no '{view}' column, named as second_view_column",
                "add the column or set second_view_column: none in dataset.yaml",
                csv_line=1,
                column=view,
                severity="warning",
            )
        resolve = PathResolver(self.card.root, follow_symlinks=self.follow_symlinks)
        # Rows that leave the folder through one symlink (e.g. images/ -> an image store) are
        # reported once per link, not once per image.
        escapes: dict[tuple, list] = defaultdict(list)
        for col in cols:
            values = self.table[col]
            for idx, rel in values.dropna().items():
                try:
                    out[(idx, col)] = resolve(rel)
                except SymlinkEscape as exc:
                    escapes[(col, exc.link)].append((idx, exc))
                except DataError as exc:
                    self.add(
                        "unsafe_path",
                        f"{self.at(idx, col)}: {exc}",
                        "use a path relative to the dataset folder that stays inside it (no "
                        "absolute path, no '..' that climbs out of it)",
                        self.line[idx],
                        col,
                    )
        for (col, link), hits in escapes.items():
            lines = [self.line[idx] for idx, _ in hits]
            if len(hits) == 1:
                idx, exc = hits[0]
                message = f"{self.at(idx, col)}: {exc}"
            else:
                where = f"{self.csv} {line_list(lines, _LIST_LINES)}"
                name = link.relative_to(self.card.root).as_posix() if link is not None else "a symlink"
                target = os.readlink(link) if link is not None else hits[0][1].target
                message = (
                    f"{where}: {len(hits)} {col} paths resolve outside the dataset folder "
                    f"{resolve.real_root} via the symlink {name} -> {target}"
                )
            self.add("unsafe_path", message, FOLLOW_SYMLINKS_HINT, lines[0], col)
        return out

    def image_problem(self, key, path: Path, problem: ImageProblem):
        idx, col = key
        rel = self.table[col][idx]
        self.add(
            problem.kind,
            f"{self.at(idx, col)}: {col} {rel!r}: {problem.detail}",
            IMAGE_FIXES[problem.kind],  # the metadata.csv wording, whatever the path object said
            self.line[idx],
            col,
        )

    def files_exist(self, paths: dict):
        for key, path in paths.items():
            if not path.is_file():
                detail = "is a folder, not an image file" if path.is_dir() else "image file not found"
                kind = "unreadable_image" if path.is_dir() else "missing_image"
                self.image_problem(key, path, ImageProblem(kind, path, detail, IMAGE_FIXES[kind]))

    # --------------------------------------------------------------------------- leakage
    def group_leaks(self):
        col = self.card.group_column
        if col is None:
            return
        if col not in self.table.columns:
            self.add(
                "missing_column",
                f"{self.csv} line 1 (header): no '{col}' column, the card's group_column",
                f"add the '{col}' column (which lesion/patient each image shows), or set "
                "group_column: none in dataset.yaml if images are independent",
                csv_line=1,
                column=col,
            )
            return
        empty = self.table.index[self.table[col].isna()]
        if len(empty):
            tokens = sorted(set(map(str, self.card.missing_tokens.get(col, pd.Series(dtype=object)))))
            verb = "means" if len(tokens) == 1 else "mean"
            said = f" ({' and '.join(map(repr, tokens))} {verb} missing)" if tokens else ""
            self.add(
                "missing_group",
                f"{self.csv} {line_list(self.line[empty], _LIST_LINES)}, column '{col}': no {col}{said} "
                f"in {len(empty)} row{'s' if len(empty) != 1 else ''}; each such row counts as its "
                "own lesion/patient (splits, leakage check, grouped bootstrap)",
                f"fill in '{col}' where rows show the same lesion/patient; rows left empty are "
                "treated as independent",
                self.line[empty[0]],
                col,
                severity="warning",
            )
        frame = self.table[[col, "split"]].dropna()
        frame = frame[frame["split"].isin(SPLITS)]
        nsplits = frame.groupby(col, sort=False)["split"].nunique()
        for group in nsplits.index[nsplits > 1]:
            rows = frame[frame[col] == group]
            where = "; ".join(
                f"{s} ({line_list(self.line[r.index], _LIST_LINES)})"
                for s, r in rows.groupby("split", sort=False)
            )
            self.add(
                "group_leak",
                f"{self.csv}: {col} {group!r} appears in several splits: {where}",
                f"move all rows of this {col} into one split, or re-split with "
                f"`dermkit data split --force` (groups by {col})",
                self.line[rows.index[0]],
                col,
            )

    def duplicate_links(self):
        """Cross-split leaks declared by the duplicate column (ids of identical copies)."""
        dcol, icol = self.card.duplicate_column, self.card.id_column
        if dcol is None or dcol not in self.table.columns:
            return
        ids = self.table[icol] if icol and icol in self.table.columns else self.table["image"]
        by_id = defaultdict(list)
        for idx, value in ids.dropna().items():
            by_id[str(value)].append(idx)
        split = self.table["split"]
        reported = set()
        for idx, value in self.table[dcol].dropna().items():
            for other_id in filter(None, re.split(r"[;,|\s]+", str(value))):
                others = by_id.get(other_id)
                if not others:
                    self.add(
                        "duplicate_reference",
                        f"{self.at(idx)}: {dcol} names {other_id!r}, which is not in the table",
                        f"fix the id in '{dcol}' or remove it",
                        self.line[idx],
                        dcol,
                        severity="warning",
                    )
                    continue
                for other in others:
                    pair = frozenset((idx, other))
                    if pair in reported or split[idx] not in SPLITS or split[other] not in SPLITS:
                        continue
                    reported.add(pair)  # copies usually name each other: report a pair once
                    if split[idx] != split[other]:
                        self.add(
                            "duplicate_image_leak",
                            f"{self.at(idx)} ({split[idx]}) and line {self.line[other]} "
                            f"({split[other]}) are copies of one image ({dcol})",
                            "put identical images in the same split (or keep one copy)",
                            self.line[idx],
                            dcol,
                        )

    def identical_images(self, digests: dict[tuple, str]):
        by_hash: dict[str, list[tuple]] = defaultdict(list)
        for key, digest in digests.items():
            by_hash[digest].append(key)
        split = self.table["split"] if "split" in self.table.columns else None
        for keys in by_hash.values():
            paths = {_norm_rel(str(self.table[c][i])) for i, c in keys}
            if len(paths) < 2:
                continue  # one file listed twice: duplicate_row reports it
            keys = sorted(keys)
            described = ", ".join(
                f"line {self.line[i]} {c} {self.table[c][i]!r}"
                + (f" ({split[i]})" if split is not None else "")
                for i, c in keys[:_LIST_LINES]
            )
            splits = {split[i] for i, _ in keys if split[i] in SPLITS} if split is not None else set()
            if len(splits) > 1:
                self.add(
                    "duplicate_image_leak",
                    f"{self.csv}: byte-identical images in different splits: {described}",
                    "put identical images in the same split (give them one group id) or keep one copy",
                    self.line[keys[0][0]],
                    keys[0][1],
                )
            else:
                self.add(
                    "identical_images",
                    f"{self.csv}: byte-identical image files: {described}",
                    "harmless within one split; remove copies if they were not intended",
                    self.line[keys[0][0]],
                    keys[0][1],
                    severity="warning",
                )

    def near_duplicates(self, hashes: dict[tuple, np.ndarray], digests: dict[tuple, str]):
        """Pairs of rows whose images look like one picture (resized, re-encoded, brightened or
        mirrored: perceptual hashes within ``NEAR_DUPLICATE_BITS``). In different splits an error;
        in one split a warning. Left out: byte-identical files (``identical_images``), one file
        listed twice (``duplicate_row``) and rows that a split keeps together anyway (one group id,
        or declared copies): a group or declared copy in two splits is reported as such."""
        if len(hashes) < 2:
            return
        keys = sorted(hashes)
        table, split = self.table, self.table["split"]
        gcol = self.card.group_column if self.card.group_column in table.columns else None
        groups = effective_groups(table, gcol, self.card.duplicate_column, self.card.id_column)
        best: dict[tuple, tuple] = {}
        for a, b, bits in hash_pairs([hashes[k] for k in keys]):
            (ka, kb) = sorted((keys[a], keys[b]))
            (i, ca), (j, cb) = ka, kb
            if i == j or digests[ka] == digests[kb] or groups[i] == groups[j]:
                continue
            if _norm_rel(str(table[ca][i])) == _norm_rel(str(table[cb][j])):
                continue
            if split[i] not in SPLITS or split[j] not in SPLITS:
                continue  # invalid_split / missing_value report these rows
            if (i, j) not in best or bits < best[(i, j)][0]:
                best[(i, j)] = (bits, ca, cb)
        for (i, j), (bits, ca, cb) in sorted(best.items()):
            first = f"line {self.line[i]} {ca} {table[ca][i]!r} ({split[i]})"
            second = f"line {self.line[j]} {cb} {table[cb][j]!r} ({split[j]})"
            how = f"{bits} of {HASH_BITS} perceptual-hash bits differ"
            if split[i] != split[j]:
                group = f"'{gcol}'" if gcol else "a group column (group_column in dataset.yaml)"
                self.add(
                    "near_duplicate_leak",
                    f"{self.csv}: near-duplicate images in different splits ({how}: the same picture "
                    f"resized, re-encoded, brightened or mirrored): {first} and {second}",
                    f"put both in one split: give them one group id in {group}, or keep one copy "
                    "(`dermkit data split --force` keeps near-duplicates in one split)",
                    self.line[i],
                    ca,
                )
            else:
                self.add(
                    "near_duplicates",
                    f"{self.csv}: near-duplicate images ({how}): {first} and {second}",
                    "harmless within one split (`dermkit data split` keeps them together); remove "
                    "copies if they were not intended",
                    self.line[i],
                    ca,
                    severity="warning",
                )

    # -------------------------------------------------------------------------- metadata
    def metadata(self) -> pd.DataFrame:
        card = self.card
        types = card.metadata_columns
        rows = []
        missing_tokens = set(card.missing_values)
        for col in list(types) + [c for c in card.required_metadata if c not in types]:
            typ = types.get(col, "categorical")
            required = col in card.required_metadata
            if col not in self.table.columns:
                self.add(
                    "missing_column",
                    f"{self.csv} line 1 (header): no '{col}' column, listed in the card's "
                    + ("required_metadata" if required else "metadata_columns"),
                    f"add the '{col}' column or remove it from dataset.yaml",
                    csv_line=1,
                    column=col,
                    severity="error" if required else "warning",
                )
                rows.append({"column": col, "type": typ, "non_missing_pct": 0.0, "unique": 0, "present": False})
                continue
            values = self.table[col]
            values = values.mask(values.isin(missing_tokens))
            if required:
                for idx in self.table.index[values.isna()]:
                    self.add(
                        "missing_value",
                        f"{self.at(idx)}: required metadata '{col}' is empty"
                        + (f" ({self.table[col][idx]!r})" if pd.notna(self.table[col][idx]) else ""),
                        f"fill in '{col}' on that line, or remove it from required_metadata",
                        self.line[idx],
                        col,
                    )
            present = values.dropna()
            if typ == "numeric":
                bad = present[pd.to_numeric(present, errors="coerce").isna()]
                for idx in bad.index:
                    self.add(
                        "non_numeric",
                        f"{self.at(idx)}: {bad[idx]!r} in numeric column '{col}'",
                        f"write a number (leave the cell empty if unknown), or declare "
                        f"'{col}: categorical' under metadata_columns in dataset.yaml",
                        self.line[idx],
                        col,
                    )
            elif typ == "boolean":
                lowered = present.astype(str).str.strip().str.lower()
                bad = present[~lowered.isin(BOOLEAN_TRUE | BOOLEAN_FALSE)]
                if len(bad):
                    self.add(
                        "non_boolean",
                        f"{self.csv} lines {line_list(self.line[bad.index], _LIST_LINES, word=False)}: values "
                        f"{sorted(map(str, bad.unique()))[:5]} in boolean column '{col}'",
                        "use true/false, yes/no or 1/0; list tokens meaning 'unknown' under "
                        "missing_values in dataset.yaml, or declare the column categorical",
                        self.line[bad.index[0]],
                        col,
                        severity="warning",
                    )
            n = len(values)
            fraction = len(present) / n if n else 0.0
            if n and 1 - fraction > SPARSE_FRACTION:
                self.add(
                    "sparse_metadata",
                    f"metadata column '{col}' is empty in {100 * (1 - fraction):.0f}% of rows",
                    "expected for optional fields; a model using it must handle missing values",
                    column=col,
                    severity="warning",
                )
            rows.append(
                {
                    "column": col,
                    "type": typ,
                    "non_missing_pct": round(100 * fraction, 1),
                    "unique": int(present.nunique()),
                    "present": True,
                }
            )
        return pd.DataFrame(rows, columns=["column", "type", "non_missing_pct", "unique", "present"])

    def summary(self, classes) -> pd.DataFrame:
        t = self.table
        if "diagnosis" not in t.columns or "split" not in t.columns:
            return pd.DataFrame(columns=[*SPLITS, "total"])
        known = t[t["split"].isin(SPLITS) & t["diagnosis"].notna()]
        extra = sorted(set(known["diagnosis"]) - set(classes))
        table = pd.crosstab(known["diagnosis"], known["split"])
        table = table.reindex(index=list(classes) + extra, columns=list(SPLITS), fill_value=0)
        table = table.fillna(0).astype(int)
        table["total"] = table.sum(axis=1)
        table.loc["total"] = table.sum(axis=0)
        table.index.name = "diagnosis"
        table.columns.name = None
        return table

    def small_classes(self, summary: pd.DataFrame, classes):
        for cls in classes:
            if cls not in summary.index:
                continue
            for split in SPLITS:
                n = int(summary.loc[cls, split])
                if n < SMALL_CLASS:
                    self.add(
                        "small_class",
                        f"class {cls!r} has {n} image{'s' if n != 1 else ''} in {split} "
                        f"(< {SMALL_CLASS}); its {split} metrics will be unreliable",
                        "collect more images of this class, merge it with a related class, "
                        "or report its metrics with confidence intervals",
                        column="diagnosis",
                        severity="warning",
                    )


_REQUIRED_FIX = {
    "image": "add an 'image' column with each image's path relative to the dataset folder",
    "diagnosis": "add a 'diagnosis' column with the class name of each image",
    "split": "add a 'split' column (train/val/test), e.g. with `dermkit data split`",
}


def _inspect(path: Path):
    """Read, hash and fully decode one image (runs in a worker thread): ``(digest, perceptual
    hash or None, None)``, or ``(None, None, ImageProblem)``."""
    try:
        data = read_image_bytes(path)
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        image = decode_image_bytes(data, path, convert=False)
    except ImageProblem as problem:
        return None, None, problem
    return digest, image_hash(image), None


def _inspect_chunk(paths: list[Path]) -> list[tuple]:
    return [_inspect(p) for p in paths]


def _inspect_all(paths: list[Path], progress: bool, threads: int) -> dict[Path, tuple]:
    """Inspect ``paths`` in a thread pool; returns path -> (digest | None, perceptual hash | None,
    ImageProblem | None).

    Pillow releases the GIL while decoding, so threads overlap decoding with header parsing and
    file reads. Paths go to the pool in chunks: one future per 200x150 image costs as much as
    decoding it.
    """
    results: dict[Path, tuple] = {}
    if not paths:
        return results
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("checking images"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
    # Decompression-bomb *warnings* become errors for every worker thread: the filter list is
    # process-wide, so it is set once here rather than (thread-unsafely) inside each worker.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with cf.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = {pool.submit(_inspect_chunk, chunk): chunk for chunk in chunks}
            if bar is not None:
                bar.start()
                task = bar.add_task("images", total=len(paths))
            try:
                for future in cf.as_completed(futures):
                    chunk = futures[future]
                    results.update(zip(chunk, future.result()))
                    if bar is not None:
                        bar.advance(task, len(chunk))
            finally:
                if bar is not None:
                    bar.stop()
    return results


def check_dataset(
    card: DatasetCard | str | os.PathLike,
    check_images: bool = True,
    progress: bool = True,
    threads: int = THREADS,
    follow_symlinks: bool | None = None,
) -> CheckResult:
    """Check a dataset and return every problem found (errors and warnings).

    Errors: missing required column; empty image/diagnosis/split or required metadata; unknown
    diagnosis; label != index of diagnosis; split not train/val/test; an empty split; duplicate
    image rows; paths escaping the folder; missing images; non-numeric values in numeric
    metadata; a group (``group_column``) in two splits; identical images in two splits (declared
    in ``duplicate_column``, or byte-identical files when ``check_images``); near-duplicate
    images in two splits (``near_duplicate_leak``, when ``check_images``: resized, re-encoded,
    brightened or mirrored copies whose perceptual hashes differ in at most
    ``NEAR_DUPLICATE_BITS`` of 256 bits, unless their rows share a group id or are declared
    copies, which a group or declared-copy leak reports). With ``check_images`` every image (and
    second view) is also read, hashed (BLAKE2b and a perceptual hash of the decoded image) and
    fully decoded in ``threads`` threads to find unreadable, truncated and decompression-bomb
    files. Also errors: diagnoses differing only by case/spacing (from each other when the card
    lists no classes, ``case_variant``; or from a listed class) and a header without rows.
    Warnings: classes with < 5 images in a split, byte-identical or near-duplicate images within
    one split, metadata columns > 50% empty, rows without a group id (each its own group), a
    metadata.csv not separated by commas (read anyway), and similar.

    An exclusion list (``exclude:`` in dataset.yaml) that is missing, unreadable, has no ``image``
    column or names an image not in metadata.csv is an error (``exclusion_list``); otherwise its
    per-reason counts are in ``extra['excluded']`` (information: the checks above see every row).

    Key columns are read as :attr:`DatasetCard.table` normalises them: surrounding spaces are
    dropped and "NA", "null", "None", "-", ... (plus the card's ``missing_values``) are missing.

    ``follow_symlinks`` (default: the card's ``follow_symlinks``, false unless dataset.yaml sets
    it) allows image paths that lead out of the folder through a symlink, for this check only.
    """
    start = time.perf_counter()
    card = load_card(card)
    c = _Checker(card, follow_symlinks)
    table = c.table
    c.file_format()
    c.required_columns()
    has = set(table.columns)
    empty = c.no_rows()
    for col in REQUIRED_COLUMNS:
        if col in has:
            c.missing_values(col)

    if card.declared_classes is None and "diagnosis" in has:
        # Classes come from the table: spellings differing only by case are one error each,
        # and every spelling counts as a class for the rest of the check (no unknown noise).
        classes = c.spelling_variants()
    else:
        try:
            classes = card.classes
        except DataError:
            classes = []
    c.card_consistency(classes)
    if "diagnosis" in has:
        codes = c.diagnoses(classes, case_reported=card.declared_classes is None)
        if "label" in has:
            c.labels(codes, classes)
    if "split" in has and not empty:
        c.splits()

    images_checked = 0
    if "image" in has:
        c.duplicate_rows()
        paths = c.paths()
        if check_images:
            unique = sorted(set(paths.values()))
            results = _inspect_all(unique, progress, threads)
            images_checked = len(unique)
            digests, hashes = {}, {}
            for key, path in paths.items():
                digest, phash, problem = results[path]
                if problem is not None:
                    c.image_problem(key, path, problem)
                else:
                    digests[key] = digest
                    if phash is not None:
                        hashes[key] = phash
            if "split" in has:
                c.identical_images(digests)
                c.near_duplicates(hashes, digests)
        else:
            c.files_exist(paths)
    if "split" in has:
        c.group_leaks()
        c.duplicate_links()

    coverage = c.metadata()
    summary = c.summary(classes)
    if "diagnosis" in has and "split" in has:
        c.small_classes(summary, classes)
    extra = {}
    try:
        if card.exclude is not None:
            extra = {"excluded": card.excluded, "exclusion_note": card.exclusion_note()}
    except DataError as exc:
        c.add("exclusion_list", str(exc), "fix the exclusion list, or remove 'exclude:' from dataset.yaml")
    return CheckResult(
        name=card.name,
        root=card.root,
        problems=c.problems,
        summary=summary,
        metadata_coverage=coverage,
        images_checked=images_checked,
        seconds=time.perf_counter() - start,
        checked_images=check_images,
        extra=extra,
    )
