"""vppcli checkpoints: one `.safetensors` file whose metadata rebuilds the model.

The safetensors header's string map holds `format: pt` and `vppcli: <JSON>`; the JSON is
`CheckpointMetadata.to_dict()`: format version, the whole `VppConfig` (preset, widths, pruning
schedule, classes and dataset ids, pre-processing), default input size, parameter count,
provenance and licence. No pickle is involved in reading or writing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from vppcli.checkpoints.metadata import (  # noqa: F401  (re-exported: the format's public names)
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointMetadata,
    config_overrides,
    default_input_size,
    first_line,
    format_version,
    read_metadata,
)
from vppcli.checkpoints.registry import SYNTHETIC_NOTICE, bundled_name, resolve_weights
from vppcli.errors import CheckpointError, OutputError, UsageError
from vppcli.model.rovis import VppModel, build_model
from vppcli.outputs.atomic import AtomicFile

log = logging.getLogger(__name__)

_LOADABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    bundled = bundled_name(path)
    if bundled is not None:
        log.warning(SYNTHETIC_NOTICE.format(name=bundled))
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
    plural = noun + ("es" if noun.endswith(("ch", "sh", "s", "x")) else "s")  # "shape mismatches"
    return f"{len(items)} {noun if len(items) == 1 else plural} ({shown})"
