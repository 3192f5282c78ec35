"""Reading params.yaml into frozen dataclasses: the field helpers and the validation every block goes through.

``choice`` and ``bounded`` declare a field's allowed values; ``load_block`` reads one block and checks
every key (type, choices, range), raising ``ParamsError`` that names the bad key and what it accepts.
The blocks themselves are in ``core.params``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from core.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
T = TypeVar("T")


class ParamsError(PipelineError, ValueError):
    """A params.yaml value that a stage cannot use."""

    hint = "fix it in params.yaml (or dvc exp run -S <key>=<value>)"


def choice(*allowed: str, default: str) -> Any:
    """A string field restricted to ``allowed``."""
    return field(default=default, metadata={"choices": allowed})


def bounded(default: float | int, lo: float | None = None, hi: float | None = None) -> Any:
    """A numeric field with inclusive bounds."""
    return field(default=default, metadata={"lo": lo, "hi": hi})


def read_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    if not path.exists():
        raise ParamsError(f"{path} not found: run stages from the project root (where params.yaml lives)", hint="")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of blocks, got {type(data).__name__}")
    return data


def load_block(name: str, cls: type[T], path: Path = PARAMS_FILE) -> T:
    """Read block ``name`` of params.yaml into dataclass ``cls``, validating every key."""
    raw = read_params(path).get(name) or {}
    return parse_block(name, cls, raw)


def parse_block(name: str, cls: type[T], raw: dict[str, Any]) -> T:
    if not isinstance(raw, dict):
        raise ParamsError(f"{name}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"{name}.{unknown[0]}: unknown key; allowed keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {key: _check(f"{name}.{key}", raw[key], hints[key], fields[key]) for key in raw}
    return cls(**values)


def _check(key: str, value: Any, hint: Any, f: dataclasses.Field) -> Any:
    if not _matches(value, hint):
        raise ParamsError(f"{key}: got {value!r} ({type(value).__name__}); expected {_describe(hint)}")
    if isinstance(value, int) and not isinstance(value, bool) and _origin_is(hint, float):
        value = float(value)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ParamsError(f"{key}: got {value!r}; allowed values: {', '.join(map(repr, choices))}")
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo or hi is not None and value > hi:
            rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise ParamsError(f"{key}: got {value!r}; allowed range {rng}")
    return value


def _origin_is(hint: Any, t: type) -> bool:
    return hint is t or t in typing.get_args(hint)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def as_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)
