"""vppcli checkpoints: one `.safetensors` file whose metadata rebuilds the model.

The safetensors header's string map holds `format: pt` and `vppcli: <JSON>`; the JSON is
`CheckpointMetadata.to_dict()`: format version, the whole `VppConfig` (preset, widths, pruning
schedule, classes and dataset ids, pre-processing), default input size, parameter count,
provenance and licence. No pickle is involved in reading or writing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from vppcli.checkpoints import validate
from vppcli.checkpoints.registry import resolve_weights
from vppcli.checkpoints.schedules import schedule_name, schedule_summary
from vppcli.config import PRESETS, VppConfig
from vppcli.errors import CheckpointError, OutputError, UsageError
from vppcli.model.rovis import VppModel, build_model
from vppcli.outputs.atomic import AtomicFile

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = "vppcli"
_LOADABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def converter_id() -> str:
    from vppcli import __version__

    return f"vppcli {__version__} (checkpoint format {FORMAT_VERSION})"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def save_checkpoint(tensors: Mapping[str, Tensor], metadata: CheckpointMetadata, path: str | Path) -> Path:
    """Write tensors + metadata atomically (`AtomicFile`: hidden temporary, flushed to disk, renamed)."""
    path = Path(path)
    header = {"format": "pt", METADATA_KEY: json.dumps(metadata.to_dict(), sort_keys=True)}
    plain = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    target = AtomicFile(path, "wb")
    try:
        save_file(plain, target.temporary, metadata=header)
        # safetensors creates its file 0600; give it the mode `open()` would, or a shared cache
        # becomes unreadable to its other users.
        os.chmod(target.temporary, 0o666 & ~_current_umask())
        return target.commit()
    except (OSError, SafetensorError) as error:
        target.discard()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise OutputError(f"cannot write {path}: {reason}") from None
    except BaseException:
        target.discard()
        raise


def _current_umask() -> int:
    # POSIX reads the umask only by setting it: set a strict one and restore it at once, so a file
    # another thread creates in between is at worst too private, never too open.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def save_model(
    model: VppModel,
    path: str | Path,
    *,
    provenance: dict | None = None,
    notes: str = "",
    license: str = "",
    dataset: str = "",
    input_size: tuple[int, int] | None = None,
) -> Path:
    """Save `model` (weights in their current dtype) with metadata that rebuilds it; atomic."""
    metadata = CheckpointMetadata(
        config=model.config,
        num_parameters=sum(p.numel() for p in model.parameters()),
        input_size=input_size or default_input_size(model.config),
        provenance={"written_by": converter_id(), "date": utc_now(), **(provenance or {})},
        dataset=dataset,
        license=license,
        notes=notes,
    )
    return save_checkpoint(model.state_dict(), metadata, path)


def read_metadata(path: str | Path) -> CheckpointMetadata:
    """The metadata of a vppcli checkpoint file, without reading its tensors."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
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


def load_model(
    weights: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, strict: bool = True
) -> VppModel:
    """Build the model a checkpoint describes and load its weights; eval mode, on `device` in `dtype`.

    `weights` is a file path or a registered name. Stored fp16/bf16 weights are cast to `dtype`.
    Strict (default): every tensor must match the model by name, shape and kind, else a
    `CheckpointError` lists the differences. Non-strict: missing tensors keep their random init
    and unexpected ones are dropped (logged); shape differences still fail.
    """
    if dtype not in _LOADABLE_DTYPES:
        raise UsageError(f"cannot load weights as {dtype}; use float32, float16 or bfloat16")
    path = resolve_weights(weights)
    metadata = read_metadata(path)
    if metadata.missing_keys and strict:
        raise CheckpointError(
            f"{path} is a partial conversion ({len(metadata.missing_keys)} tensors missing, e.g. "
            f"{metadata.missing_keys[0]}); load it with strict=False if random values for them are acceptable"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line(error)})") from None
    # A crafted config can pass the type checks and still not build: torch reports that with
    # ValueError, RuntimeError or a bare assert (e.g. a width not divisible by the head count).
    try:
        model = build_model(metadata.config, seed=0)  # seeded: the caller's RNG stays untouched
    except (ValueError, ArithmeticError, RuntimeError, AssertionError) as error:
        raise CheckpointError(f"{path}: its config does not describe a model vppcli can build ({first_line(error)})") from None
    expected = model.state_dict()
    problems = compare_state(expected, tensors)
    if problems.shapes or problems.kinds or (strict and not problems.matches):
        raise CheckpointError(f"{path} does not match its {metadata.variant} config: {problems.describe()}")
    if not problems.matches:
        log.warning("%s: loading non-strictly: %s", path, problems.describe())
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=False)
    return model.to(device=device, dtype=dtype).eval()


@dataclass(frozen=True)
class StateProblems:
    """How a set of tensors differs from what a model expects."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()  # "name: file [a, b] vs model [c, d]"
    kinds: tuple[str, ...] = ()  # integer stored where the model has floats, or the reverse

    @property
    def matches(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes or self.kinds)

    def describe(self) -> str:
        parts = [
            _listing(items, noun)
            for items, noun in (
                (self.missing, "missing tensor"),
                (self.unexpected, "unexpected tensor"),
                (self.shapes, "shape mismatch"),
                (self.kinds, "dtype mismatch"),
            )
            if items
        ]
        return "; ".join(parts) if parts else "no differences"


def compare_state(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> StateProblems:
    shapes, kinds = [], []
    for name in sorted(expected.keys() & found.keys()):
        want, got = expected[name], found[name]
        if tuple(want.shape) != tuple(got.shape):
            shapes.append(f"{name}: file {list(got.shape)} vs model {list(want.shape)}")
        elif want.is_floating_point() != got.is_floating_point():
            kinds.append(f"{name}: file {got.dtype} vs model {want.dtype}")
    return StateProblems(
        missing=tuple(sorted(expected.keys() - found.keys())),
        unexpected=tuple(sorted(found.keys() - expected.keys())),
        shapes=tuple(shapes),
        kinds=tuple(kinds),
    )


def _listing(items: tuple[str, ...], noun: str, limit: int = 3) -> str:
    shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''} ({shown})"


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
