"""Atomic output writers: a crash never leaves a half-written file behind.

Each writer writes to a temporary file in the same folder, flushes it to disk and renames it
over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from dermkit.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    DataError before anything is written when ``path`` is an existing folder or a folder above
    it is a file (see :func:`output_file`)."""
    path = output_file(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give outputs normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` as a file to write: its folder created; DataError naming it when it is an existing
    folder, or when something on the way to it is a file (nothing is written then)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {path} is an existing folder, not a file; give a file path (a new name, or a "
                        "file inside that folder)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{what} {path}: cannot create its folder {path.parent} ({exc.strerror or exc})") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write strict JSON: NaN/inf (e.g. an AUC undefined for a split without positives) become null."""
    text = json.dumps(json_ready(obj), indent=2, default=_json_default, allow_nan=False)
    return write_text(path, text + "\n")


def json_ready(obj: Any) -> Any:
    """Copy of ``obj`` as :func:`write_json` writes it: NaN/inf as ``None`` (JSON null), numpy
    scalars and arrays as Python numbers and lists, tuples as lists, dict keys as text.

    For a JSON-able dict that is returned rather than written (e.g. ``Report.metrics_json``).
    """
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # numpy scalars/arrays, numpy not imported
        obj = obj.tolist()
    if isinstance(obj, float):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_figure(path: str | os.PathLike, fig, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _json_default(obj: Any):
    # numpy scalars/arrays and paths appear in metrics dicts; make them JSON-native.
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def unique_names(names) -> list[str]:
    """Folder names for a list that may repeat: ``["ph2", "ph2"] -> ["ph2", "ph2-2"]``."""
    out, seen = [], {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a freshly written folder into place so readers never see a half-written one."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
