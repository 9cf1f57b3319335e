"""vppcli: fast video instance segmentation with Video Patch Pruning (VPP).

The public names are imported on first use (PEP 562): `import vppcli` and the `vpp` command's
start-up (`--help`, `--version`) must not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

# public name -> module that defines it
_EXPORTS = {
    "FrameInstances": "vppcli.results",
    "FrameSelection": "vppcli.video",
    "SegmentedFrame": "vppcli.segmenter",
    "Segmenter": "vppcli.segmenter",
    "TrackSummary": "vppcli.results",
    "VideoPredictor": "vppcli.inference",
    "VideoState": "vppcli.inference",
    "VppConfig": "vppcli.config",
    "VideoResult": "vppcli.segmenter",
    "VppModel": "vppcli.model.rovis",
    "build_model": "vppcli.model.rovis",
    "open_source": "vppcli.video",
    "preset": "vppcli.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vppcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
