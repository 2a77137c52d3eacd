"""Bounded readers of the files a user hands dermkit (configs, cards, prompt and alias files, answers).

Every reader of an outside file goes through here, so each of them refuses the same things with
a :class:`~dermkit.errors.DermkitError` that names the file, line and column, never a traceback:

- text that is not UTF-8 (the line and column of the first bad byte), a folder or a missing file
  where a file is expected;
- YAML (:func:`load_yaml`): a document over :data:`MAX_YAML_CHARS`, duplicate keys (PyYAML keeps
  the last one without a word; here both lines are named), aliases that expand to more than
  :data:`MAX_YAML_NODES` values (an alias bomb is tiny on disk and shared in memory, but any code
  that walks, copies or prints it does the expanded work), nesting deeper than
  :data:`MAX_YAML_DEPTH`, a recursive alias, and one value (a scalar) longer than
  :data:`MAX_VALUE_CHARS`. Aliases themselves stay allowed: they are ordinary YAML, and bounded
  they are harmless;
- JSON lines (:func:`read_jsonl`): one object per line, the line and column of a syntax error;
- table cells (:func:`first_long_cell`): a cell longer than :data:`MAX_VALUE_CHARS`.

Messages quote a bad value through :func:`dermkit.errors.excerpt` (a short excerpt, "empty" for a
missing value).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dermkit.errors import ConfigError, DataError, excerpt

__all__ = ["MAX_YAML_CHARS", "MAX_YAML_NODES", "MAX_YAML_DEPTH", "MAX_VALUE_CHARS", "decode_text", "read_text",
           "load_yaml", "read_jsonl", "first_long_cell"]

MAX_YAML_CHARS = 1 << 20  # a config, card or prompt file; the largest packaged one is 16 KB
MAX_YAML_NODES = 100_000  # values after expanding aliases; the largest packaged file has ~1,000
MAX_YAML_DEPTH = 64  # nesting levels
# One value: a YAML scalar, a CSV cell, a VQA answer. The longest in the supported releases and
# packaged files is a few hundred characters (captions, URLs, descriptions).
MAX_VALUE_CHARS = 65_536


# ------------------------------------------------------------------------------ text


def decode_text(data: bytes, where: str, error: type[Exception] = DataError) -> str:
    """``data`` as UTF-8 (a byte-order mark dropped); ``error`` naming the line and column of the
    first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"{where} line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8 text "
                    f"({exc.reason}); save the file as UTF-8") from None


def read_text(path: str | os.PathLike, what: str, error: type[Exception] = DataError,
              max_chars: int | None = None) -> str:
    """The UTF-8 text of the file ``path`` (``what`` says what it is: "config file", "answers
    file"); ``error`` when it is missing, a folder, unreadable, not UTF-8 or over ``max_chars``."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder; give the file itself")
    try:
        if max_chars is not None and path.stat().st_size > 4 * max_chars:  # UTF-8: at most 4 bytes a character
            raise error(f"{what} {path} is {path.stat().st_size:,} bytes; the limit is {max_chars:,} characters "
                        "(is it the right file?)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    text = decode_text(data, str(path), error)
    if max_chars is not None and len(text) > max_chars:
        raise error(f"{what} {path} is {len(text):,} characters; the limit is {max_chars:,} (is it the right file?)")
    return text


# ------------------------------------------------------------------------------ YAML


def load_yaml(text: str, where: str, error: type[Exception] = ConfigError) -> Any:
    """``yaml.safe_load(text)`` with the bounds of the module docstring; ``error`` names ``where``,
    the line and the key."""
    import yaml

    if len(text) > MAX_YAML_CHARS:
        raise error(f"{where} is {len(text):,} characters; a YAML file here is limited to {MAX_YAML_CHARS:,} "
                    "(is it the right file?)")
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise error(f"{where}: nested too deeply to read (more than {MAX_YAML_DEPTH} levels)") from None
        except yaml.YAMLError as exc:
            raise _invalid(exc, where, error) from None
        if node is None:
            return None
        _Bounds(where, error).check(node)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:  # e.g. a bad merge key or an unknown tag (safe: nothing is executed)
            raise _invalid(exc, where, error) from None
    finally:
        loader.dispose()


def _invalid(exc, where: str, error: type[Exception]) -> Exception:
    """``error`` for a YAML syntax or construction error: where, line, column and PyYAML's problem."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = str(getattr(exc, "problem", None) or exc)
    problem = problem if len(problem) <= 120 else problem[:117] + "..."
    return error(f"{where}{at}: not valid YAML ({problem})")


class _Bounds:
    """One walk over the composed YAML nodes: duplicate keys, depth, expanded size, value length.

    Aliases are the same node object in the composed tree, so the expanded size of each node is
    computed once (memoised by identity): the walk is linear in the file, whatever the aliases
    expand to."""

    def __init__(self, where: str, error: type[Exception]):
        self.where, self.error = where, error
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def fail(self, node, text: str):
        raise self.error(f"{self.where} line {node.start_mark.line + 1}: {text}")

    def check(self, node) -> None:
        self.size(node, "the document", 0)

    def too_large(self, node, path: str):
        self.fail(node, f"{path} expands to more than {MAX_YAML_NODES:,} values (through aliases: *name repeats "
                        "what &name marks, an alias bomb); write the values out, or fewer of them")

    def size(self, node, path: str, depth: int) -> int:
        import yaml

        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.open:
            self.fail(node, f"{path} refers to itself through an alias (a recursive &anchor / *alias); "
                            "write the value out")
        if depth > MAX_YAML_DEPTH:
            shown = path if len(path) <= 60 else path[:57] + "..."
            self.fail(node, f"{shown} is nested more than {MAX_YAML_DEPTH} levels deep")
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > MAX_VALUE_CHARS:
                self.fail(node, f"the value of {path} is {len(node.value):,} characters; a value is limited to "
                                f"{MAX_VALUE_CHARS:,} ({excerpt(node.value, 40)})")
            self.sizes[key] = 1
            return 1
        self.open.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else None
                if name is not None and k.tag != "tag:yaml.org,2002:merge":
                    if name in seen:
                        self.fail(k, f"key {excerpt(name, 60)} appears twice in {path} (lines {seen[name]} and "
                                     f"{k.start_mark.line + 1}); YAML would keep the second without a word: "
                                     "keep one")
                    seen[name] = k.start_mark.line + 1
                child = f"{name}" if path == "the document" else f"{path}.{name}"
                total += self.size(k, child, depth + 1) + self.size(v, child if name is not None else path, depth + 1)
                if total > MAX_YAML_NODES:
                    self.too_large(node, "the document" if path == "the document" else f"the value of {path}")
        else:  # a sequence
            for i, v in enumerate(node.value):
                total += self.size(v, f"{path}[{i}]", depth + 1)
                if total > MAX_YAML_NODES:
                    self.too_large(node, "the document" if path == "the document" else f"the value of {path}")
        self.open.discard(key)
        self.sizes[key] = total
        return total


# ------------------------------------------------------------------------------ JSON lines and tables


def read_jsonl(path: str | os.PathLike, what: str, error: type[Exception] = DataError) -> list[tuple[int, Any]]:
    """``[(line number, value)]`` of a JSON-lines file (blank lines skipped); ``error`` naming the
    line and column of a line that is not JSON, or of a byte that is not UTF-8."""
    path = Path(path)
    out = []
    for n, line in enumerate(read_text(path, what, error).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise error(f"{path} line {n}, column {exc.colno}: not valid JSON ({exc.msg}); one JSON object per "
                        "line") from None
        except RecursionError:
            raise error(f"{path} line {n}: the JSON is nested too deeply to read") from None
    return out


def first_long_cell(frame, limit: int = MAX_VALUE_CHARS) -> tuple[Any, str, int] | None:
    """``(row label, column, length)`` of the first cell of a table of strings (a pandas DataFrame)
    longer than ``limit`` characters, else None."""
    for column in frame.columns:
        values = frame[column]
        if values.dtype != object and str(values.dtype) not in ("string", "str"):
            continue
        lengths = values.str.len()
        if (lengths > limit).any():
            row = lengths.index[(lengths > limit).to_numpy()][0]
            return row, str(column), int(lengths[row])
    return None
