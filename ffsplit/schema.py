"""Bounds for JSON that ffsplit reads back, and typed records that carry their own.

A file ffsplit did not just write (a manifest, a runtime's record) may have been
edited by hand, damaged or crafted. A *check* (``integer``, ``text``, ``table``,
...) appends one short phrase per problem to a list, so a verb can refuse the
file in one line listing what is wrong.

A *record* is a frozen dataclass whose every field is declared with ``bound``:
its bounds sit beside its type. ``record_check`` builds the check of a JSON
table from the fields (a field with a default may be absent), ``from_json``
reads a checked table into the record, nested records and tuples of records
included, and ``to_json`` writes it back. One mechanism, so a field cannot be
added to a record and forgotten in its schema.
"""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, TypeVar

Check = Callable[[Any, str, list[str]], None]
T = TypeVar("T")

# a name ffsplit writes into a path or shows (a target, a file it writes): letters, digits, . _ + -
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def kind_of(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def integer(lo: int, hi: int) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            errors.append(f"{where} must be an integer, not {kind_of(v)}")
        elif not lo <= v <= hi:
            errors.append(f"{where} = {v} is outside [{lo}, {hi}]")

    return check


def number(lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False, open_hi: bool = False) -> Check:
    """A finite number from ``lo`` to ``hi``, each end included unless open."""

    def check(v: Any, where: str, errors: list[str]) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            errors.append(f"{where} must be a number, not {kind_of(v)}")
        elif not math.isfinite(v) or not ((lo < v) if open_lo else (lo <= v)) or not ((v < hi) if open_hi else (v <= hi)):
            span = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
            errors.append(f"{where} = {v} is outside {span}")

    return check


def one_of(*values: int) -> Check:
    """An integer from ``values``."""

    def check(v: Any, where: str, errors: list[str]) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            errors.append(f"{where} must be an integer, not {kind_of(v)}")
        elif v not in values:
            errors.append(f"{where} {v} is not one of {', '.join(map(str, values))}")

    return check


def _at(where: str, key: object) -> str:
    """Where a table's ``key`` is: ``where.key``, or ``key`` at the top of a file (``where`` empty)."""
    return f"{where}.{key}" if where else str(key)


def text(max_len: int = 4096, pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = ()) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if not isinstance(v, str):
            errors.append(f"{where} must be a string, not {kind_of(v)}")
        elif len(v) > max_len or "\0" in v:
            errors.append(f"{where} is too long or holds a NUL byte")
        elif choices and v not in choices:
            errors.append(f"{where} '{v[:40]}' is not one of {', '.join(choices)}")
        elif pattern is not None and not pattern.fullmatch(v):
            errors.append(f"{where} '{v[:40]}' is malformed")

    return check


def boolean(v: Any, where: str, errors: list[str]) -> None:
    if not isinstance(v, bool):
        errors.append(f"{where} must be true or false, not {kind_of(v)}")


def optional(inner: Check) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if v is not None:
            inner(v, where, errors)

    return check


def either(*options: Check) -> Check:
    """The first option that accepts ``v``; the last one's complaint otherwise."""

    def check(v: Any, where: str, errors: list[str]) -> None:
        for option in options:
            mine: list[str] = []
            option(v, where, mine)
            if not mine:
                return
        errors.extend(mine)

    return check


def table(fields: dict[str, Check], *, optional_keys: frozenset[str] = frozenset(), strict: bool = False) -> Check:
    """A JSON object (or TOML table) with these keys; extra keys are left unread, or with ``strict`` each is a
    problem (a file a person writes: a misspelt key must not be ignored)."""

    def check(v: Any, where: str, errors: list[str]) -> None:
        if not isinstance(v, dict):
            errors.append(f"{where} must be a table, not {kind_of(v)}")
            return
        if strict:
            errors.extend(f"unknown key '{_at(where, k)}'" for k in v if k not in fields)
        for key, inner in fields.items():
            if key not in v:
                if key not in optional_keys:
                    errors.append(f"{_at(where, key)} is missing")
                continue
            inner(v[key], _at(where, key), errors)

    return check


def items(inner: Check, *, max_len: int, min_len: int = 0) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if not isinstance(v, list):
            errors.append(f"{where} must be a list, not {kind_of(v)}")
        elif not min_len <= len(v) <= max_len:
            errors.append(f"{where} has {len(v)} entries (allowed {min_len} to {max_len})")
        else:
            for i, item in enumerate(v):
                inner(item, f"{where}[{i}]", errors)
                if len(errors) > 20:
                    return

    return check


def mapping(inner: Check, *, max_len: int = 10_000, key: re.Pattern[str] | None = None) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if not isinstance(v, dict):
            errors.append(f"{where} must be a table, not {kind_of(v)}")
            return
        if len(v) > max_len:
            errors.append(f"{where} has {len(v)} entries (at most {max_len})")
            return
        for k, item in v.items():
            if key is not None and not key.fullmatch(k):
                errors.append(f"{where} key '{k[:40]}' is malformed")
            inner(item, _at(where, k), errors)

    return check


def anything(_v: Any, _where: str, _errors: list[str]) -> None:
    return None


# -- records: dataclasses whose fields carry their bounds


def bound(check: Check, *, default: Any = MISSING, default_factory: Any = MISSING, required: bool | None = None) -> Any:
    """A record field checked by ``check``. It may be absent from a JSON table when it has a default, unless
    ``required`` says otherwise (a field the writer fills in last, but every written table holds)."""
    must = default is MISSING and default_factory is MISSING if required is None else required
    return field(default=default, default_factory=default_factory, metadata={"check": check, "required": must})


def nested(cls: type, *, default: Any = MISSING, required: bool | None = None) -> Any:
    """A field holding the record ``cls`` (or None, when the default is None)."""
    check = record_check(cls)
    return bound(optional(check) if default is None else check, default=default, required=required)


def nested_items(cls: type, *, max_len: int, min_len: int = 0, default: Any = MISSING) -> Any:
    """A field holding a tuple of records ``cls``."""
    return bound(items(record_check(cls), max_len=max_len, min_len=min_len), default=default)


@functools.cache
def record_check(cls: type, *, strict: bool = False, leave_out: frozenset[str] = frozenset()) -> Check:
    """The check of a table holding the record ``cls``: each field's bounds, by its name (``strict``: a key
    that is no field is a problem; ``leave_out``: fields the table may not hold, as unknown keys)."""
    missing = [f.name for f in fields(cls) if "check" not in f.metadata]
    if missing:
        raise TypeError(f"{cls.__name__} fields without bounds: {', '.join(missing)}")
    kept = [f for f in fields(cls) if f.name not in leave_out]
    return table({f.name: f.metadata["check"] for f in kept},
                 optional_keys=frozenset(f.name for f in kept if not f.metadata["required"]), strict=strict)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(hint: Any, value: Any) -> Any:
    """``value`` (from a checked JSON table) as the field type ``hint`` holds it."""
    if value is None:
        return None
    if isinstance(hint, type) and is_dataclass(hint):
        return from_json(hint, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (dict, Mapping) and len(args) == 2:
        return {k: _typed(args[1], v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _typed(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        return tuple(_typed(args[0], v) for v in value) if args else tuple(value)
    return value


def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """The record ``cls`` from a table its ``record_check`` accepted (keys it does not know are left out)."""
    hints = _hints(cls)
    return cls(**{f.name: _typed(hints[f.name], data[f.name]) for f in fields(cls) if f.name in data})  # type: ignore[call-arg]


def _plain(value: Any) -> Any:
    if isinstance(value, Record):  # its own to_json, which may spell out derived values
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return to_json(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_json(record: Any) -> dict[str, Any]:
    """A record as a JSON table: every field, except a None the table may leave out."""
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None and not f.metadata.get("required", True):
            continue
        out[f.name] = _plain(value)
    return out


class Record:
    """Base of a record (a dataclass, frozen or not): ``from_json`` / ``to_json`` / ``check`` as methods."""

    @classmethod
    def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
        return from_json(cls, data)

    @classmethod
    def check(cls) -> Check:
        return record_check(cls)

    def to_json(self) -> dict[str, Any]:
        return to_json(self)
