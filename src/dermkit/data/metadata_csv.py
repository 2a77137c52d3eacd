"""Reading a metadata.csv robustly, and citing its lines in messages.

The delimiter (comma, semicolon, tab or pipe) is detected, a byte-order mark is ignored, every
cell stays a string, and an unreadable file or a header naming one column twice is a DataError
naming the file, the line and the fix. Line numbers count the header as line 1.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from dermkit.errors import DataError, excerpt
from dermkit.inputs import MAX_VALUE_CHARS, decode_text, first_long_cell

__all__ = [
    "DELIMITERS",
    "DELIMITER_NAMES",
    "detect_delimiter",
    "read_metadata",
    "read_metadata_and_delimiter",
    "csv_lines",
    "line_list",
]

DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def csv_lines(df: pd.DataFrame) -> pd.Series:
    """Line numbers of ``df``'s rows in metadata.csv (header = line 1).

    Uses the ``csv_line`` column when present (see :meth:`~dermkit.data.card.DatasetCard.rows`),
    else assumes ``df`` keeps the index of :attr:`~dermkit.data.card.DatasetCard.table` (0-based
    row number).
    """
    if "csv_line" in df.columns:
        return df["csv_line"].astype(int)
    return pd.Series(np.asarray(df.index, dtype=np.int64) + 2, index=df.index)


def line_list(lines: Iterable[int], limit: int = 8, word: bool = True) -> str:
    """"line 3" / "lines 3, 5, 9 and 4 more": file lines (header = line 1), at most ``limit`` listed;
    without ``word`` just "3, 5, 9 and 4 more"."""
    lines = [int(x) for x in lines]
    head = ", ".join(str(x) for x in lines[:limit])
    text = head + (f" and {len(lines) - limit} more" if len(lines) > limit else "")
    if not word:
        return text
    return f"{'line' if len(lines) == 1 else 'lines'} {text}"


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


def read_metadata_and_delimiter(path: Path) -> tuple[pd.DataFrame, str]:
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
    except UnicodeDecodeError:
        decode_text(Path(path).read_bytes(), str(path))  # raises, naming the line and column
        raise  # pragma: no cover - pandas and Python disagree on what is UTF-8
    named = [c for c in df.columns if len(str(c)) > MAX_VALUE_CHARS]
    if named:
        raise DataError(f"{path} line 1 (header): a column name of {len(str(named[0])):,} characters "
                        f"({excerpt(named[0], 40)}); is it the right file?")
    long = first_long_cell(df)
    if long is not None:
        row, column, length = long
        raise DataError(f"{path} line {row + 2}, column {column!r}: a cell of {length:,} characters "
                        f"({excerpt(df.at[row, column], 40)}); a cell is limited to {MAX_VALUE_CHARS:,}. Is the "
                        "file damaged (an unclosed quote joins lines into one cell)?")
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
    :attr:`~dermkit.data.card.DatasetCard.table`).
    """
    return read_metadata_and_delimiter(Path(path))[0]
