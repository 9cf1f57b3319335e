"""Type checks for checkpoint metadata read from a file.

The metadata JSON comes from a file anyone can craft, so every field is checked before it is
used: a wrong type must become a one-line error naming the field, never an AttributeError deep
inside the model code. The `VppConfig` part is checked against the dataclasses' own type hints,
so a new config field is covered without touching this module.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, Literal

from vppcli.config import VppConfig

_REQUIRED: Any = object()
# JSON gives lists; `to_dict` output passed straight back (no JSON in between) still holds tuples.
_SEQUENCES = (list, tuple)
# Dataset ids are whatever the dataset uses; block indexes and a few counts may be 0; every other
# config integer is a size or count, and a 0 there only fails later (a division, an empty head).
_SIGNED_INTS = frozenset({"config.category_ids"})
_ZERO_OR_MORE = frozenset({
    "config.adapter.interaction_indexes", "config.adapter.extra_extractors", "config.pruning.map_block",
    "config.pruning.selective_blocks", "config.pruning.cache_block", "config.tracker.num_frames_retain",
})  # fmt: skip


class MetadataError(ValueError):
    """Malformed metadata; the message starts with the field, e.g. `provenance must be ...`."""


def item(data: Mapping[str, Any], name: str, default: Any = _REQUIRED) -> Any:
    """`data[name]`, or `default`; a `MetadataError` when a required field is absent."""
    if name in data:
        return data[name]
    if default is _REQUIRED:
        raise MetadataError(f"{name} is missing")
    return default


def metadata_object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise MetadataError(f"the metadata must be a JSON object, not {_kind(data)}")
    return data


def integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    if not _is_int(value):
        raise MetadataError(f"{name} must be an integer, not {_kind(value)}")
    if minimum is not None and value < minimum:
        raise MetadataError(f"{name} must be at least {minimum}, not {value}")
    return value


def string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise MetadataError(f"{name} must be a string, not {_kind(value)}")
    return value


def strings(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, _SEQUENCES):
        raise MetadataError(f"{name} must be a list of strings, not {_kind(value)}")
    return tuple(string(member, f"{name}[{index}]") for index, member in enumerate(value))


def string_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise MetadataError(f"{name} must be an object of strings, not {_kind(value)}")
    return {key: string(member, f"{name}.{key}") for key, member in value.items()}


def size_pair(value: Any, name: str) -> tuple[int, int]:
    if not isinstance(value, _SEQUENCES) or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
        raise MetadataError(f"{name} must be [height, width] in positive integers, not {_describe(value)}")
    return value[0], value[1]


def config(value: Any) -> VppConfig:
    """The metadata's `config` (a `VppConfig.to_dict()`), every leaf type-checked first (absent
    fields keep their defaults, as in `VppConfig.from_dict`)."""
    _check(value, VppConfig, "config")
    try:
        return VppConfig.from_dict(value)
    except (ValueError, ArithmeticError) as error:  # __post_init__'s consistency checks
        raise MetadataError(f"config is inconsistent: {str(error).strip() or type(error).__name__}") from None


def _check(value: Any, hint: Any, name: str) -> None:
    """Raise a `MetadataError` unless `value` is the JSON form of something of type `hint`."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise MetadataError(f"{name} must be an object, not {_kind(value)}")
        hints = typing.get_type_hints(hint)
        for key, member in value.items():
            if key not in hints:
                raise MetadataError(f"{name}.{key} is not a {hint.__name__} field")
            _check(member, hints[key], f"{name}.{key}")
    elif typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            raise MetadataError(f"{name} must be one of {', '.join(map(repr, choices))}, not {_describe(value)}")
    elif typing.get_origin(hint) is tuple:
        _check_tuple(value, typing.get_args(hint), name)
    elif hint is bool:
        if not isinstance(value, bool):
            raise MetadataError(f"{name} must be true or false, not {_kind(value)}")
    elif hint is int:
        field = name.split("[")[0]
        integer(value, name, minimum=None if field in _SIGNED_INTS else 0 if field in _ZERO_OR_MORE else 1)
    elif hint is float:
        # JSON has one number type: an integer is a valid float; NaN and infinities are not.
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise MetadataError(f"{name} must be a finite number, not {_describe(value)}")
    elif hint is str:
        string(value, name)
    else:  # a config annotation this checker does not know: a vppcli bug, not a bad file
        raise TypeError(f"cannot check {name} against {hint!r}")


def _check_tuple(value: Any, args: tuple[Any, ...], name: str) -> None:
    if not isinstance(value, _SEQUENCES):
        raise MetadataError(f"{name} must be a list, not {_kind(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        hints = (args[0],) * len(value)
    elif len(value) != len(args):
        raise MetadataError(f"{name} must have {len(args)} items, not {len(value)}")
    else:
        hints = args
    for index, (member, hint) in enumerate(zip(value, hints)):
        _check(member, hint, f"{name}[{index}]")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1 here


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    """A short rendering of a bad value for a one-line message."""
    text = repr(value)
    return text if len(text) <= 40 else _kind(value)
