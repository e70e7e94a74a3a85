"""Validation of configuration values: one error type that names the key, the value and what was expected.

The config dataclasses call these in `__post_init__`, so a bad value fails where it is made (a library
call, or a Hydra-composed params.yaml read by the pipeline) and never deep inside training. A
`ConfigError` carries the key; the pipeline prefixes the section (`train` + `lr` -> `train.lr`), so the
user reads the key they would type on the command line.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, TypeVar

E = TypeVar("E", bound=enum.Enum)


class ConfigError(ValueError):
    """A configuration value that is not allowed.

    Attributes:
        key: dotted config key (e.g. "train.lr").
        value: the bad value.
        expected: what is allowed, in words.
    """

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key}={value!r}: expected {expected}")

    def under(self, section: str) -> "ConfigError":
        """The same error with the key prefixed by its section (`lr` under `train` -> `train.lr`)."""
        return ConfigError(f"{section}.{self.key}" if section else self.key, self.value, self.expected)


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false (a boolean, not a string or number)")
    return value


def check_int(key: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (never a bool) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, value, _range_text("an integer", minimum, maximum))
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(key, value, _range_text("an integer", minimum, maximum))
    return value


def check_float(key: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                exclusive_minimum: bool = False, exclusive_maximum: bool = False) -> float:  # fmt: skip
    """A finite real number (int or float, never a bool or a string) within the bounds."""
    expected = f"a finite number{_bounds_text(minimum, maximum, exclusive_minimum, exclusive_maximum)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, value, expected)
    if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
        raise ConfigError(key, value, expected)
    if maximum is not None and (value > maximum or (exclusive_maximum and value == maximum)):
        raise ConfigError(key, value, expected)
    return float(value)


def _bounds_text(minimum, maximum, exclusive_minimum: bool, exclusive_maximum: bool) -> str:
    """" > 0", " in [0, 1)", " <= 5" or "" (no bounds): what a user reads, never "[-inf, inf]"."""
    if minimum is not None and maximum is not None:
        return f" in {'(' if exclusive_minimum else '['}{minimum}, {maximum}{')' if exclusive_maximum else ']'}"
    if minimum is not None:
        return f" {'>' if exclusive_minimum else '>='} {minimum}"
    if maximum is not None:
        return f" {'<' if exclusive_maximum else '<='} {maximum}"
    return ""


def check_str(key: str, value: Any, *, nonempty: bool = True) -> str:
    if not isinstance(value, str) or (nonempty and not value.strip()):
        raise ConfigError(key, value, "a non-empty string" if nonempty else "a string")
    return value


def parse_enum(key: str, value: Any, kind: type[E]) -> E:
    """An Enum member from itself, its name or its value, case-insensitively (`nf4`, `NF4`, `DataType.NF4`)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str) and not isinstance(value, enum.Enum):
        text = value.strip().split(".")[-1].lower()
        for member in kind:
            if text in (member.name.lower(), str(member.value).lower()):
                return member
    elif isinstance(value, int) and not isinstance(value, (bool, enum.Enum)):
        for member in kind:
            if member.value == value:
                return member
    allowed = ", ".join(m.name for m in kind)
    raise ConfigError(key, value, f"one of {allowed} ({kind.__name__}, case-insensitive)")


def _range_text(kind: str, minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def enum_check(kind: type[E]) -> Callable[[str, Any], E]:
    return lambda key, value: parse_enum(key, value, kind)


def validate_fields(obj: Any, checks: dict[str, Callable[[str, Any], Any]]) -> None:
    """Applies `checks[field](key, value) -> value` to a dataclass and stores the (converted) values back."""
    for name, check in checks.items():
        object.__setattr__(obj, name, check(name, getattr(obj, name)))
