"""Checkpoints: vppcli's safetensors format, conversion of the authors' VPP checkpoints, and the
registry and download of named models.

    model = load_model("vpp-tiny-pkr53")          # a registered name (cache, bundled) or a file path
    save_model(model, "mine.safetensors")

Names are imported on first use (PEP 562), so that `vpp weights list` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "BUNDLED": "vppcli.checkpoints.registry",
    "OFFICIAL": "vppcli.checkpoints.registry",
    "CheckpointMetadata": "vppcli.checkpoints.format",
    "Conversion": "vppcli.checkpoints.convert",
    "ConversionReport": "vppcli.checkpoints.convert",
    "cache_dir": "vppcli.checkpoints.registry",
    "convert_file": "vppcli.checkpoints.official",
    "convert_official": "vppcli.checkpoints.convert",
    "download_weights": "vppcli.checkpoints.download",
    "load_model": "vppcli.checkpoints.format",
    "load_official": "vppcli.checkpoints.official",
    "read_metadata": "vppcli.checkpoints.format",
    "resolve_weights": "vppcli.checkpoints.registry",
    "save_model": "vppcli.checkpoints.format",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vppcli.checkpoints' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
