"""Reading the authors' `.pth` files safely and converting them to vppcli checkpoints.

Only `torch.load(weights_only=True)` is used. mmengine training checkpoints also pickle their
logging state (`message_hub`: HistoryBuffer objects holding numpy arrays), which the weights-only
unpickler refuses. Those few named globals, and only those, are bound to an inert stand-in that
accepts and discards its state, so nothing from the file is ever executed; any other global is
refused with its name.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from vppcli.checkpoints.convert import Conversion, convert_official
from vppcli.checkpoints.format import (
    CheckpointMetadata,
    converter_id,
    default_input_size,
    first_line,
    save_checkpoint,
    utc_now,
)
from vppcli.checkpoints.registry import OFFICIAL_DATASET, OFFICIAL_LICENSE
from vppcli.errors import CheckpointError, OutputError, UsageError

log = logging.getLogger(__name__)

# Bookkeeping classes of mmengine training checkpoints (never part of the weights).
_BOOKKEEPING = frozenset({
    "mmengine.logging.history_buffer.HistoryBuffer",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
})  # fmt: skip
_BOOKKEEPING_PREFIXES = ("numpy.dtypes.",)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")  # how torch names a refused global when it cannot list them


class _Inert:
    """Stands in for a bookkeeping object: takes any constructor arguments and state, keeps nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_official(path: str | Path) -> Any:
    """The unpickled checkpoint, weights-only; `CheckpointError` for anything else."""
    path = Path(path)
    _check_magic(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refused:
        needed = _globals_needed(path) or sorted(set(_GLOBAL_IN_MESSAGE.findall(str(refused))))
        if not needed or not all(_is_bookkeeping(name) for name in needed):
            names = ", ".join(needed) or "unknown objects"
            raise CheckpointError(f"refusing to load {path}: it is not a weights-only checkpoint (it needs code: "
                                  f"{names}); vppcli never unpickles code") from None
        log.info("%s: ignoring mmengine bookkeeping objects (%s)", path, ", ".join(needed))
        with torch.serialization.safe_globals([(_Inert, name) for name in needed]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
                raise CheckpointError(f"{path} cannot be read weights-only ({first_line(error)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line(error)})") from None


def convert_file(
    src: str | Path,
    dst: str | Path,
    *,
    schedule: str | None = None,
    allow_partial: bool = False,
    overwrite: bool = False,
) -> tuple[Path, Conversion]:
    """Convert an official `.pth` into a vppcli `.safetensors` (written atomically)."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise UsageError(f"{dst}: the converted checkpoint must end in .safetensors")
    if not src.is_file():
        raise CheckpointError(f"checkpoint file not found: {src}")
    if dst.exists() and not overwrite:
        raise OutputError(f"{dst} exists; pass --overwrite to replace it")
    return write_conversion(load_official(src), dst, source=src, schedule=schedule, allow_partial=allow_partial)


def write_conversion(
    checkpoint: Any,
    dst: Path,
    *,
    source: Path,
    source_name: str | None = None,
    source_sha256: str | None = None,
    schedule: str | None = None,
    schedule_hint: str | None = None,
    allow_partial: bool = False,
    provenance: dict[str, str] | None = None,
) -> tuple[Path, Conversion]:
    """Convert a loaded official checkpoint (read from `source`) and save it at `dst`."""
    source_name = source_name or source.name
    conversion = convert_official(
        checkpoint, schedule=schedule, schedule_hint=schedule_hint, source_name=source_name, allow_partial=allow_partial
    )
    report = conversion.report
    notes = list(report.notes)
    if report.ignored:
        count = len(report.ignored)
        notes.append(f"dropped {count} tensor{'s' if count != 1 else ''} the reference never uses")
    if not report.complete:
        notes.append(f"partial conversion: {report.problems()}")
    metadata = CheckpointMetadata(
        config=conversion.config,
        num_parameters=conversion.num_parameters,
        input_size=default_input_size(conversion.config),
        provenance={
            "source": source_name,
            "source_sha256": source_sha256 or sha256_file(source),
            "converter": converter_id(),
            "date": utc_now(),
            "schedule_source": report.schedule_source,
            **(provenance or {}),
        },
        dataset=OFFICIAL_DATASET,
        license=OFFICIAL_LICENSE,
        notes="; ".join(notes),
        missing_keys=conversion.missing_keys,
    )
    return save_checkpoint(conversion.tensors, metadata, dst), conversion


def _check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    if not head:
        raise CheckpointError(f"{path} is empty")
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTOCOL:
        return
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        raise CheckpointError(f"{path} is an HTML/XML page, not a checkpoint (a download that went wrong?)")
    raise CheckpointError(f"{path} is not a PyTorch checkpoint")


def _globals_needed(path: Path) -> list[str]:
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError):  # legacy (non-zip) files: refused
        return []


def _is_bookkeeping(name: str) -> bool:
    return name in _BOOKKEEPING or name.startswith(_BOOKKEEPING_PREFIXES)
