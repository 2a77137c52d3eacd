"""Method configs: dataclasses with a nested ``engine`` (EngineConfig), read from YAML/dicts.

Engine keys may be given at the top level (``epochs: 5``) or under ``engine:``; unknown keys are
an error that lists the known ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from dermkit.errors import ConfigError

T = TypeVar("T")


def config_from_dict(cls: type[T], raw: dict[str, Any]) -> T:
    from dermkit.engine.loop import EngineConfig

    raw = dict(raw or {})
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    own = {f.name for f in dataclasses.fields(cls)} - {"engine"}
    engine_raw = {**dataclasses.asdict(cls().engine), **(raw.pop("engine", {}) or {})}
    for key in list(raw):
        if key in engine_fields and key not in own:
            engine_raw[key] = raw.pop(key)
    unknown = (set(raw) - own) | (set(engine_raw) - engine_fields)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}; known keys: {', '.join(sorted(own | engine_fields))}")
    return cls(**raw, engine=EngineConfig(**engine_raw))
