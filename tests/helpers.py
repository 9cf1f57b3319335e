"""Test helpers shared by several test modules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from vppcli.config import VppConfig
from vppcli.model.rovis import VppModel, build_model

# Copies of ../shared/docs/keys_vpp_*.txt: every key and shape an official checkpoint holds.
KEY_LISTS = Path(__file__).resolve().parent / "data"


def moving_clip(count: int, height: int = 64, width: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Small uint8 RGB frames: noise texture plus a bright square moving right."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    frames = []
    for t in range(count):
        frame = base.copy()
        x0 = (8 + 4 * t) % (width - 16)
        frame[16:40, x0 : x0 + 16] = (250, 30, 30)
        frames.append(frame)
    return frames


def dense_twin(model: VppModel) -> VppModel:
    """The same weights in a model whose pruning is switched off (the dense path)."""
    config: VppConfig = model.config
    dense = build_model(config.replace(pruning=dataclasses.replace(config.pruning, enabled=False)))
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if "selective_module" not in k})
    return dense
