"""params.yaml -> typed stage configs. Unknown keys are errors: a typo must not silently do nothing.

params.yaml names the batch (`batch_id`) and the data root (`data`) once, at the top; dvc.yaml
refers to the same two keys (`${batch_id}`, `${data}`). Each stage's batch id and folders are derived
from them here through `rf1m.paths.Layout`, so the paths a stage writes and the paths DVC tracks
cannot disagree. A section may still name one of them itself (tests point stages at temporary
folders that way), and a command-line override wins over both.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import yaml

from rf1m.paths import DATA_ROOT, Layout

DEFAULT_BATCH = "demo"


# What each section takes from the top-level batch id and data root (configs name roots; the
# stage adds the batch folder itself).
def _release_of(p: dict) -> dict:
    """RFNet trains and is evaluated on the release the release stage compiles: named once, there."""
    rel = p.get("release") or {}
    return {k: rel[src] for k, src in (("release", "version"), ("releases", "out")) if src in rel}


DERIVED: dict[str, typing.Callable[[Layout, str, dict], dict]] = {
    "products": lambda at, b, p: {"out": at.products},
    "generate": lambda at, b, p: {"batch_id": b, "products": at.products, "out": at.shards_root},
    "labelstudio": lambda at, b, p: {"files_root": at.base},
    "annotate_push": lambda at, b, p: {"batch_id": b, "shards": at.shards_root, "labels": at.labels_root,
                                    "media": at.media_root, "files_root": at.base},
    "panel": lambda at, b, p: {"batch_id": b, "shards": at.shards_root},
    "annotate_pull": lambda at, b, p: {"batch_id": b, "labels": at.labels_root},
    "consensus": lambda at, b, p: {"batch_id": b, "labels": at.labels_root},
    "release": lambda at, b, p: {"batches": [b], "shards": at.shards_root, "labels": at.labels_root},
    "prelabel": lambda at, b, p: {"batch_id": b, "shards": at.shards_root, "out": at.predictions_root},
    "rfnet": lambda at, b, p: _release_of(p),
    "evaluate": lambda at, b, p: _release_of(p),
    # cyclic and rfft use the generator, sampler, layout and aux maps the generate section names
    "cyclic": lambda at, b, p: {"data": at.base, "generate": {**(p.get("generate") or {}), "products": at.products,
                                                               "out": at.shards_root}},
    "rfft": lambda at, b, p: {"products": at.products, **{k: v for k, v in (p.get("generate") or {}).items() if k in (
        "base_model", "device", "steps", "guidance", "controlnet_scale", "layout", "aux", "prompts")}},
    # rfft_eval evaluates what the rfft section trained, with the same products, generator and judge
    "rfft_eval": lambda at, b, p: {"rfft": merge(derived("rfft", p), p.get("rfft") or {})},
}


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


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, nested sections merged key by key (an override of `layout.size`
    keeps the rest of `layout`)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read(path: str | Path = "params.yaml") -> dict:
    """The whole params file; a missing file means every default."""
    p = Path(path)
    return (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}


def data_root(path: str | Path = "params.yaml") -> str:
    return str(read(path).get("data", DATA_ROOT))


def derived(section: str, data: dict) -> dict:
    """The batch id and folders `section` takes from the top of params.yaml."""
    if section not in DERIVED:
        return {}
    batch = data.get("batch_id", DEFAULT_BATCH)
    if not isinstance(batch, str):
        raise ValueError(f"params batch_id must be a string, not {batch!r}")
    values = DERIVED[section](Layout(data.get("data", DATA_ROOT)), batch, data)
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def load(section: str, cls, path: str | Path = "params.yaml", overrides: dict | None = None):
    """The `section` of params.yaml as `cls`: derived paths, then the section, then `overrides`."""
    data = read(path)
    merged = merge(merge(derived(section, data), data.get(section) or {}), overrides or {})
    return from_dict(cls, merged, f" [{section}]")


# ---------------------------------------------------------------- command-line overrides

def _flag_type(tp) -> dict | None:
    """argparse keywords for a field of type `tp`, or None when it has no simple command-line form."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        return _flag_type(non_none[0]) if len(non_none) == 1 else None
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str):
        return {"type": tp}
    if origin is tuple and args and all(a in (int, float, str) for a in args if a is not Ellipsis):
        return {"type": args[0], "nargs": "+" if Ellipsis in args else len(args)}
    return None


def add_field_flags(parser: argparse.ArgumentParser, cls, section: str, skip: set[str] = frozenset(),
                    prefix: str = "") -> None:
    """One `--field` per config field (`--layout.size` for a field of a nested config), typed from
    its annotation; a field without a simple form (a list of prompts) is left to params.yaml."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name, tp = prefix + f.name, hints[f.name]
        if name in skip:
            continue
        if dataclasses.is_dataclass(tp):
            if not prefix:
                add_field_flags(parser, tp, section, skip, name + ".")
            continue
        kw = _flag_type(tp)
        if kw is not None:
            parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                                metavar=None if "action" in kw else name.rsplit(".", 1)[-1].upper(),
                                help=f"overrides params {section}.{name}", **kw)


def given(ns: argparse.Namespace, cls, prefix: str = "") -> dict:
    """The fields given on the command line, nested as params.yaml nests them."""
    out = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp) and not prefix:
            if sub := given(ns, tp, name + "."):
                out[f.name] = sub
        elif getattr(ns, name, None) is not None:
            out[f.name] = getattr(ns, name)
    return out
