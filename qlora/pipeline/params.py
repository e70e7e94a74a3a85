"""params.yaml -> a validated, typed `PipelineConfig`, and a record of which keys a stage reads.

`pipeline_config(mapping)` builds every section from the composed mapping with the config dataclasses
as schemas: unknown keys, wrong types (no truthy strings, no bools for numbers), non-finite numbers,
out-of-range values, unknown enum values (accepted case-insensitively) and dangling references (a run
naming a data type that is not in `quants`) all fail here, before a stage does any work, with one
`ConfigError` naming the dotted key and what is allowed.

`ReadRecorder` wraps a PipelineConfig and records the dotted keys a stage's `plan` reads, so a test
can check that dvc.yaml declares each of them as a params dependency of that stage.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qlora.checks import ConfigError, check_bool, check_float, check_int, parse_enum
from qlora.pipeline.config import PipelineConfig

_NoneType = type(None)


def build(kind: Any, value: Any, key: str) -> Any:
    """`value` (plain YAML data) converted to the annotated type `kind`; errors name `key`."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, f"a mapping of {kind.__name__} fields")
        hints = typing.get_type_hints(kind)
        fields = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(value) - fields)
        if unknown:
            where = f"{key}.{unknown[0]}" if key else str(unknown[0])
            raise ConfigError(where, value[unknown[0]], f"no such key; {key or 'params'} has: {', '.join(sorted(fields))}")
        optional = {f.name for f in dataclasses.fields(kind) if f.default is None}  # may be left out
        missing = sorted(fields - set(value) - optional)
        if missing:
            where = f"{key}.{missing[0]}" if key else missing[0]
            raise ConfigError(where, None, "a value: the key is missing (params.yaml is composed with every key: run "
                              "scripts/compose_params.py)")  # fmt: skip
        kwargs = {name: build(hints[name], v, f"{key}.{name}" if key else name) for name, v in value.items()}
        try:
            return kind(**kwargs)
        except ConfigError as e:
            raise (e.under(key) if key else e) from None
    if origin is dict:
        _, item = typing.get_args(kind)
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "a mapping")
        return {str(k): build(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "a list")
        return tuple(build(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(kind) if a is not _NoneType]
        if value is None:
            return None
        return build(args[0], value, key)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return parse_enum(key, value, kind)
    if kind is bool:
        return check_bool(key, value)
    if kind is int:
        return check_int(key, value)
    if kind is float:
        return check_float(key, value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "a string")
        return value
    raise TypeError(f"no conversion for {key}: {kind!r}")


def pipeline_config(params: Mapping[str, Any]) -> PipelineConfig:
    """A validated PipelineConfig from a composed mapping (params.yaml, or a Hydra config as a dict).

    Raises:
        ConfigError: the first bad key, named in full, with the value and what is allowed.
    """
    return build(PipelineConfig, params, "")


def load_params(path: str | Path = "params.yaml") -> PipelineConfig:
    """Reads and validates params.yaml.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: invalid YAML or any invalid key.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: compose it with `python scripts/compose_params.py` (or `dvc exp run`)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "<file>", f"valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), type(data).__name__, "a mapping of sections")
    return pipeline_config(data)


class ReadRecorder:
    """A read-only view of a PipelineConfig that records the dotted keys read through it.

    Sections (dataclasses) and mappings are views too: reading a plain value records its full key
    (`data.perplexity_windows`); `whole(view)` records the view's key and returns the real, typed object
    (a job keeps real objects only); iterating a mapping records the whole mapping.
    """

    def __init__(self, target: Any, prefix: str = "", reads: set[str] | None = None) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "reads", set() if reads is None else reads)

    def _key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else str(name)

    def _wrap(self, value: Any, key: str) -> Any:
        if dataclasses.is_dataclass(value) or isinstance(value, Mapping):
            return ReadRecorder(value, key, self.reads)
        self.reads.add(key)
        return value

    def __getattr__(self, name: str) -> Any:
        if isinstance(self._target, Mapping) or name.startswith("_"):
            raise AttributeError(name)
        return self._wrap(getattr(self._target, name), self._key(name))

    def __getitem__(self, name: str) -> Any:
        if name not in self._target:
            self.reads.add(self._prefix)
            raise KeyError(name)
        return self._wrap(self._target[name], self._key(name))

    def __contains__(self, name: str) -> bool:
        self.reads.add(self._key(name) if name in self._target else self._prefix)
        return name in self._target

    def __iter__(self):
        self.reads.add(self._prefix)
        return iter(self._target)

    def __len__(self) -> int:
        self.reads.add(self._prefix)
        return len(self._target)

    def keys(self):
        self.reads.add(self._prefix)
        return self._target.keys()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")


def whole(section: Any) -> Any:
    """The real config object behind a (recorded) view, its whole key recorded as read; others as they are."""
    if isinstance(section, ReadRecorder):
        section.reads.add(section._prefix)
        return section._target
    return section


def lookup(mapping: Mapping[str, Any], name: str, key: str) -> Any:
    """`mapping[name]` (the real object), or a ConfigError naming `key` and the allowed names."""
    if name not in mapping:
        raise ConfigError(key, name, f"one of {', '.join(sorted(mapping))}")
    return whole(mapping[name])


def pick(section: Any, kind: type, fields: tuple[str, ...]) -> Any:
    """`kind` built from only these fields of a (recorded) section, the others left at their defaults:
    a job that needs three keys of a section depends on those three, not on the section."""
    return kind(**{f: getattr(section, f) for f in fields})
