"""Method configs: dataclasses read from YAML/dicts, checked before anything is written.

A method's config is a dataclass; one that trains has a nested ``engine`` (EngineConfig) whose keys
may also be given at the top level (``epochs: 5``) or under ``engine:``. Unknown keys are an error
that lists the known ones (a typo never silently falls back to a default), and every value is
checked against its field's type (``epochs: "ten"`` fails here, naming the key, not deep in the
engine after the run folder was written).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from dermkit.engine.loop import EngineConfig
from dermkit.errors import ConfigError, excerpt

T = TypeVar("T")

__all__ = ["config_from_dict", "config_to_dict", "check_types"]


def config_from_dict(cls: type[T], raw: dict[str, Any], where: str = "config") -> T:
    """``cls(**raw)`` with engine keys routed to ``engine``, unknown keys refused, types checked."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {type(raw).__name__}")
    raw = dict(raw or {})
    own = {f.name for f in dataclasses.fields(cls)} - {"engine"}
    has_engine = any(f.name == "engine" for f in dataclasses.fields(cls))
    if not has_engine:
        unknown = set(raw) - own
        if unknown:
            raise ConfigError(_unknown(where, unknown, own))
        check_types(cls, raw, where)
        return cls(**raw)
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    given_engine = raw.pop("engine", {}) or {}
    if not isinstance(given_engine, dict):
        raise ConfigError(f"{where}: engine must be a mapping of engine keys (epochs, lr, ...)")
    engine_raw = {**dataclasses.asdict(cls().engine), **given_engine}
    for key in list(raw):
        if key in engine_fields and key not in own:
            engine_raw[key] = raw.pop(key)
    unknown = (set(raw) - own) | (set(engine_raw) - engine_fields)
    if unknown:
        raise ConfigError(_unknown(where, unknown, own | engine_fields))
    check_types(cls, raw, where)
    check_types(EngineConfig, engine_raw, where)
    return cls(**raw, engine=EngineConfig(**engine_raw))


def _unknown(where: str, unknown: set[str], known: set[str]) -> str:
    import difflib

    hints = [f"{excerpt(k, 40)} (did you mean {m[0]!r}?)"
             if (m := difflib.get_close_matches(str(k)[:100], known, n=1)) else excerpt(k, 40)
             for k in sorted(unknown, key=str)[:20]]
    return f"{where}: unknown key(s) {', '.join(hints)}; known keys: {', '.join(sorted(known))}"


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def check_types(cls, values: dict[str, Any], where: str = "config") -> None:
    """ConfigError naming the key when a value does not fit its field's annotation."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        expected = hints.get(key)
        if expected is None or _fits(value, expected):
            continue
        raise ConfigError(f"{where}: {key} must be {_describe(expected)}, got {excerpt(value)}"
                          f"{_as_number(value, expected)}")


def _as_number(value, tp) -> str:
    """The fix for a number YAML read as text: PyYAML (YAML 1.1) reads ``1e-3`` (no dot) as the
    string '1e-3', and a quoted ``"5"`` is a string too."""
    from decimal import Decimal, InvalidOperation

    wanted = [t for t in (float, int) if _fits(1.5 if t is float else 1, tp)]
    if not wanted or not isinstance(value, str) or len(value) > 40:
        return ""
    try:
        number = Decimal(value.strip().replace("_", ""))
    except InvalidOperation:
        return ""
    if not number.is_finite() or (float not in wanted and number != number.to_integral_value()):
        return ""
    plain = format(number.normalize(), "f") if float in wanted else str(int(number))
    if float in wanted and "e" in value.lower():
        mantissa, _, exponent = value.strip().lower().partition("e")
        mantissa = mantissa if "." in mantissa else mantissa + ".0"
        exponent = exponent if exponent[:1] in "+-" else "+" + exponent
        return (f" (YAML reads {value.strip()} as text: its exponent form needs a dot and a signed exponent): "
                f"write {plain} (or {mantissa}e{exponent})")
    return f" (a number in quotes is text): write {plain} without quotes"


def _fits(value, tp) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(tp)
        return (isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) if args
                else isinstance(value, (list, tuple)))
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, dict))
    return True


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_describe(args[0])}" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))
