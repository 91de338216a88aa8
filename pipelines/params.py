"""params.yaml -> typed stage configs. Unknown keys are errors: a typo must not silently do nothing."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml


def from_dict(cls, data: dict | None, where: str = ""):
    data = data or {}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown key(s) in params{where}: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(names))})")
    kw = {}
    for name, value in data.items():
        kw[name] = _convert(hints[name], value, f"{where}.{name}")
    return cls(**kw)


def _convert(tp, value, where):
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        inner = args[0]
        return tuple(_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, where)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def load(section: str, cls, path: str | Path = "params.yaml", overrides: dict | None = None):
    """The `section` of params.yaml as `cls`; a missing file or section means the defaults."""
    p = Path(path)
    data = (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}
    merged = {**(data.get(section) or {}), **(overrides or {})}
    return from_dict(cls, merged, f" [{section}]")
