"""Checks shared by the configs: a field's condition, annotated types, known field names."""

from __future__ import annotations

import dataclasses
from typing import Any


def check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}: {message}")


def check_types(config: Any) -> None:
    """Each field's value has its annotated type (ints are accepted where floats are)."""
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None and kind.endswith("| None"):
            continue
        base = kind.removesuffix(" | None")
        if base == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif base == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif base == "bool":
            ok = isinstance(value, bool)
        elif base == "str":
            ok = isinstance(value, str)
        else:
            continue
        wanted = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}[base]
        check(ok, f.name, f"must be {wanted}{' or None' if kind != base else ''}, got {value!r}")


def check_known_fields(cls: type, values: dict[str, Any], extra: set[str] = frozenset()) -> None:
    """A dict of config values names only fields of ``cls`` (plus ``extra`` aliases)."""
    known = {f.name for f in dataclasses.fields(cls)} | set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(known))}"
        )


def check_positive_int(value: Any, field_name: str) -> None:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        field_name,
        f"must be a positive integer, got {value!r}",
    )
