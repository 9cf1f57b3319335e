"""Re-save a vppcli checkpoint for shipping: floating tensors in a smaller dtype, the metadata
kept (plus where it came from), the training-only side file left behind."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vppcli.checkpoints.format import CheckpointMetadata, first_line, read_metadata, save_checkpoint
from vppcli.errors import CheckpointError, OutputError, UsageError

EXPORT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def export_checkpoint(src: str | Path, dst: str | Path, dtype: str = "fp16", overwrite: bool = False) -> Path:
    """Write `src`'s weights to `dst` with floating tensors as `dtype` (integer buffers as they
    are); atomic. Loading casts them back to the compute dtype."""
    src, dst = Path(src), Path(dst)
    if dtype not in EXPORT_DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    if dst.suffix != ".safetensors":
        raise UsageError(f"{dst}: the exported checkpoint must end in .safetensors")
    if dst.exists() and not overwrite:
        raise OutputError(f"{dst} exists; pass --overwrite to replace it")
    metadata = read_metadata(src)
    try:
        tensors = load_file(str(src))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{src} is truncated or corrupt ({first_line(error)})") from None
    target = EXPORT_DTYPES[dtype]
    cast = {name: t.to(target) if t.is_floating_point() else t for name, t in tensors.items()}
    provenance = {**metadata.provenance, "exported_from": src.name, "stored_dtype": dtype}
    exported = CheckpointMetadata(
        config=metadata.config, num_parameters=metadata.num_parameters, input_size=metadata.input_size,
        provenance=provenance, dataset=metadata.dataset, license=metadata.license, notes=metadata.notes,
        missing_keys=metadata.missing_keys,
    )
    return save_checkpoint(cast, exported, dst)
