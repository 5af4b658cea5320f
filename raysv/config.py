"""Typed configuration: frozen dataclasses built from YAML/dicts that reject unknown keys.

A config is a tree of :func:`config` classes (frozen dataclasses). Each field
is a :func:`setting`: its default, the range of values it accepts and *why*
the default is what it is, declared together, so that a reference of every
setting is generated from the classes (:func:`reference`, ``raysv config``).
Ranges are checked on construction, before the class's own ``__post_init__``
(rules that tie several fields together). ``from_dict`` builds a config from
plain data and raises :class:`~raysv.errors.ConfigError` naming the full
dotted key for an unknown key, a value of the wrong type or out of range.
``apply_overrides`` takes ``key.sub=value`` strings from the command line
(values parsed as YAML). A loaded config is not changed afterwards: code that
needs another value builds a new one with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from raysv.errors import ConfigError

T = TypeVar("T")


class RangeError(ConfigError):
    """A setting's value is outside the range its field declares."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric setting (None: unbounded on that side); checked on
    every number of the value (each entry of a list; ``None`` and strings such
    as ``auto`` pass, their meaning is the field's type's)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def ok(self, v: float) -> bool:
        return not (
            (self.ge is not None and not v >= self.ge)
            or (self.gt is not None and not v > self.gt)
            or (self.le is not None and not v <= self.le)
            or (self.lt is not None and not v < self.lt)
        )

    def __str__(self) -> str:
        low = (
            f"[{_num(self.ge)}"
            if self.ge is not None
            else f"({_num(self.gt)}"
            if self.gt is not None
            else None
        )
        high = (
            f"{_num(self.le)}]"
            if self.le is not None
            else f"{_num(self.lt)})"
            if self.lt is not None
            else None
        )
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f">= {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}"
        return f"<= {_num(self.le)}" if self.le is not None else f"< {_num(self.lt)}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    why: str,
    factory: Any = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    hint: str | None = None,
) -> Any:
    """A config field: its ``default`` (or ``factory`` for a mutable or nested
    one), the accepted range (``ge``/``gt``/``le``/``lt``) and ``why`` the
    default is what it is (a paper, a measurement, a constraint); the reference
    (:func:`reference`) prints all three. ``hint`` says what a special value
    means or why the bound (``-1: no limit``, ``or null: automatic``); range
    errors and the reference show it beside the range."""
    if not why or not why.strip():
        raise TypeError("a setting needs a reason for its default (why=...)")
    if (default is dataclasses.MISSING) == (factory is None):
        raise TypeError("a setting takes a default or a factory, not both or neither")
    meta: dict[str, Any] = {"why": why.strip()}
    if any(b is not None for b in (ge, gt, le, lt)):
        meta["range"] = Range(ge, gt, le, lt)
    if hint:
        meta["hint"] = hint
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_run_folder(out: str, uri: bool = True) -> None:
    """Check a run folder (``out`` of the run commands): a local path (or a shared mount)
    or, where ``uri``, an object-store URI (``s3://...``: the run works in a local
    working copy that it keeps in the bucket, :mod:`raysv.data.run_store`). ``file://``
    is refused (give the path)."""
    if str(out).startswith("file://"):
        raise ValueError(f"out={out!r}: give a run folder as a plain path, without file://")
    if "://" in str(out) and not uri:
        raise ValueError(
            f"out={out!r}: a sweep folder is a local path (or a shared mount), not a URI: "
            "its trials write their run folders on the nodes they run on; the run commands "
            "(demo, pretrain, train, iterate) take --out s3://..."
        )


def check_ranges(cfg: Any) -> None:
    """Raise :class:`RangeError` for the first field of ``cfg`` outside its declared range."""
    hints = None
    for f in dataclasses.fields(cfg):
        rng = f.metadata.get("range")
        if rng is None:
            continue
        value = getattr(cfg, f.name)
        items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in items:
            # numbers of any kind (numpy's too; a bool is 0 or 1); None and words pass
            if not isinstance(v, numbers.Real):
                continue
            if not rng.ok(v):
                hints = hints or typing.get_type_hints(type(cfg))
                key = f.name if i is None else f"{f.name}[{i}]"
                raise RangeError(f"{key} must be {range_text(f, hints[f.name])}, got {v!r}")


def range_text(f: dataclasses.Field, tp: Any, others: bool = True) -> str:
    """``>= 1 (or null: automatic)``: a field's range with its hint, or (``others``)
    the other values its type takes (``(or auto)``); empty without a range."""
    rng = f.metadata.get("range")
    if rng is None:
        return ""
    if f.metadata.get("hint"):
        return f"{rng} ({f.metadata['hint']})"
    alts = _alternatives(tp) if others else []
    return f"{rng} (or {' or '.join(alts)})" if alts else str(rng)


def _alternatives(tp: Any) -> list[str]:
    """The non-numeric values a field's type also takes: ``null``, ``auto``, ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple) and args:
        return _alternatives(args[0])
    if origin is typing.Literal:
        return [str(a) for a in args]
    if origin in (typing.Union, types.UnionType):
        return [x for a in args for x in (["null"] if a is type(None) else _alternatives(a))]
    return []


def config(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True)`` whose fields' declared ranges are checked on
    construction, before the class's own ``__post_init__`` runs (or the one it inherits)."""
    own = getattr(cls, "__post_init__", None)

    def __post_init__(self) -> None:
        check_ranges(self)
        if own is not None:
            own(self)

    cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True)(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` against type annotation ``tp``; ``key`` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: value {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # no setting means anything by NaN or infinity
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys here: {', '.join(prefix + k for k in sorted(fields))}"
        )
    for name, val in data.items():
        default = _field_default(fields[name])
        if isinstance(val, dict) and dataclasses.is_dataclass(default):
            data[name] = _layer(default, val)
    kwargs = {name: _coerce(val, hints[name], prefix + name) for name, val in data.items()}
    try:
        return cls(**kwargs)
    except RangeError as exc:  # the field's name, as the full dotted key
        raise RangeError(f"{prefix}{exc}") from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _layer(default: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` laid over the values of dataclass instance ``default``, recursively.

    A partial mapping for a nested config keeps the *field's* defaults (e.g. the
    demo's small Stage II settings), not those of the nested class. Plain dict
    fields (like ``model.kwargs``) are replaced, not merged; unknown keys pass
    through so that ``from_dict`` reports them.
    """
    out = {
        f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
        for f in dataclasses.fields(default)
        if f.init
        for v in [getattr(default, f.name)]
    }
    for key, val in data.items():
        cur = getattr(default, key, None) if key in out else None
        out[key] = (
            _layer(cur, val) if isinstance(val, dict) and dataclasses.is_dataclass(cur) else val
        )
    return out


def changed_keys(cfg: Any, default: Any, keys: Any) -> list[str]:
    """The dotted ``keys`` whose value in config ``cfg`` differs from ``default``'s (a
    command that sets such keys itself refuses them when given: no ignored setting)."""
    found = []
    for key in keys:
        a, b = cfg, default
        for part in key.split("."):
            a, b = getattr(a, part), getattr(b, part)
        if a != b:
            found.append(key)
    return found


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML, JSON and MLflow params)."""
    return dataclasses.asdict(cfg)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; used to log configs as MLflow params."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to nested dict ``data`` (values parsed as YAML)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({first})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML at ``path`` (or start from defaults), apply overrides, build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{p}: not a text (YAML) file: byte {exc.start} is not UTF-8"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def _type_name(tp: Any) -> str:
    """``int | None``, ``one of a, b``, ``list of float | auto``: a type as the reference prints it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args) if len(args) > 1 else str(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0]) if args else 'any'}"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def reference(cfg: Any, prefix: str = "", context: str = "") -> list[dict[str, str]]:
    """One row per setting of config ``cfg``, nested configs flattened to dotted keys:
    ``{"key", "type", "default", "range", "why"}``.

    ``cfg`` is a config class (its fields' defaults are shown; the class itself is not
    built, so one whose defaults alone do not validate works too) or an instance. A
    nested config whose field gives it other values than its class's defaults (the
    demo's small corpus, ...) says so: the row's reason is the field's, then the class's.
    """
    cls = cfg if isinstance(cfg, type) else type(cfg)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = _field_default(f) if isinstance(cfg, type) else getattr(cfg, f.name)
        why = f.metadata.get("why", "")
        if dataclasses.is_dataclass(value) and _is_dataclass_type(hints[f.name]):
            if context and value != _field_default(f):
                inner = context  # set by the enclosing field, whose reason explains it
            elif value != hints[f.name]():
                inner = f"{prefix}{f.name}: {why}"  # this field's default is not the class's
            else:
                inner = context
            rows.extend(reference(value, f"{prefix}{f.name}.", inner))
            continue
        if context and value != _field_default(f):
            why = f"{context} (default {_show(_field_default(f))}: {why})"
        rows.append(
            {
                "key": prefix + f.name,
                "type": _type_name(hints[f.name]),
                "default": _show(value),
                "range": range_text(f, hints[f.name], others=False),  # the type says them
                "why": why,
            }
        )
    return rows
