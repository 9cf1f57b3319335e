"""What a vppcli checkpoint says about itself (the safetensors header), read without torch:
`vpp info` and the option checks before a model is loaded only need this."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from vppcli.checkpoints import validate
from vppcli.checkpoints.schedules import schedule_name, schedule_summary
from vppcli.config import PRESETS, VppConfig
from vppcli.errors import CheckpointError

FORMAT_VERSION = 1
METADATA_KEY = "vppcli"


@dataclass(frozen=True)
class CheckpointMetadata:
    """Everything a checkpoint says about itself besides the tensors."""

    config: VppConfig
    num_parameters: int
    input_size: tuple[int, int]  # (H, W) network input the model is meant for (after padding)
    provenance: Mapping[str, str] = field(default_factory=dict)  # source, source_sha256, converter, date, url
    dataset: str = ""
    license: str = ""
    notes: str = ""
    missing_keys: tuple[str, ...] = ()  # set only by `vpp convert --allow-partial`; such files load non-strictly
    format_version: int = FORMAT_VERSION

    @property
    def variant(self) -> str:
        return self.config.name

    @property
    def schedule(self) -> str:
        return schedule_name(self.config)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "variant": self.variant,
            "num_parameters": self.num_parameters,
            "schedule": schedule_summary(self.config),
            "input_size": list(self.input_size),
            "dataset": self.dataset,
            "classes": list(self.config.class_names),
            "category_ids": list(self.config.category_ids),
            "provenance": dict(self.provenance),
            "license": self.license,
            "notes": self.notes,
            "missing_keys": list(self.missing_keys),
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> CheckpointMetadata:
        """Inverse of `to_dict`, checking the type of every field it reads; a `MetadataError`
        names the first bad one. `variant`, `schedule`, `classes` and `category_ids` are not read:
        they are derived from the config."""
        data = validate.metadata_object(data)
        return cls(
            config=validate.config(validate.item(data, "config")),
            num_parameters=validate.integer(validate.item(data, "num_parameters"), "num_parameters", minimum=0),
            input_size=validate.size_pair(validate.item(data, "input_size"), "input_size"),
            provenance=validate.string_map(validate.item(data, "provenance", {}), "provenance"),
            dataset=validate.string(validate.item(data, "dataset", ""), "dataset"),
            license=validate.string(validate.item(data, "license", ""), "license"),
            notes=validate.string(validate.item(data, "notes", ""), "notes"),
            missing_keys=validate.strings(validate.item(data, "missing_keys", []), "missing_keys"),
            format_version=format_version(data),
        )


def format_version(data: Any) -> int:
    """The `format_version` of raw metadata: read first, since a newer format may differ in the rest."""
    return validate.integer(validate.item(validate.metadata_object(data), "format_version"), "format_version", minimum=1)


def default_input_size(config: VppConfig) -> tuple[int, int]:
    """The padded input of a 16:9 landscape video at the config's long side (544x960 at 960)."""
    pad = config.preprocess.pad_divisor
    long_side = config.preprocess.long_side
    return math.ceil(long_side * 9 / 16 / pad) * pad, math.ceil(long_side / pad) * pad


def config_overrides(config: VppConfig) -> dict[str, Any]:
    """Dotted fields where `config` differs from its preset (empty for an unknown preset name)."""
    if config.name not in PRESETS:
        return {}
    return _diff(PRESETS[config.name]().to_dict(), config.to_dict(), "")


def _diff(base: Mapping[str, Any], other: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            changes.update(_diff(base[key], value, f"{prefix}{key}."))
        elif base.get(key) != value and key not in ("class_names", "category_ids"):
            changes[prefix + key] = value
    return changes


def read_metadata(path: str | Path) -> CheckpointMetadata:
    """The metadata of a vppcli checkpoint file, without reading its tensors."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:  # the header only: no torch needed
            header = handle.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except (SafetensorError, OSError) as error:
        hint = "; official .pth files need `vpp convert` first" if path.suffix in (".pth", ".pt") else ""
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({first_line(error)}){hint}") from None
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path} has no vppcli metadata (write it with `vpp convert` or save_model)")
    try:
        data = json.loads(header[METADATA_KEY])
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly nested JSON
        raise CheckpointError(f"{path} has unreadable vppcli metadata ({first_line(error)})") from None
    try:
        version = format_version(data)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} uses checkpoint format {version}, newer than this vppcli ({FORMAT_VERSION}); upgrade vppcli"
            )
        return CheckpointMetadata.from_dict(data)
    except validate.MetadataError as error:
        raise CheckpointError(f"{path} has invalid vppcli metadata: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
