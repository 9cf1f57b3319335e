"""The pruning schedules the authors trained: names, values, and how a config carries them.

A schedule is the Map-SM keep fraction plus one trained keep ratio per selective module. It is
part of `PruningConfig`; the name ("0.55", "0.4", "dense", or "custom") is derived from it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from vppcli.config import VppConfig
from vppcli.errors import UsageError

# name -> (Map-SM keep ratio, selective-module keep ratios), from the authors' 0.55/0.4 PKR configs
SCHEDULES: dict[str, tuple[float, tuple[float, ...]]] = {
    "0.55": (0.7, (0.56, 0.448, 0.358)),
    "0.4": (0.6, (0.42, 0.294, 0.206)),
}
DENSE = "dense"
CUSTOM = "custom"


def schedule_values(name: str) -> tuple[float, tuple[float, ...]]:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise UsageError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}") from None


def with_schedule(config: VppConfig, map_keep_ratio: float, selective_keep_ratios: tuple[float, ...]) -> VppConfig:
    pruning = dataclasses.replace(
        config.pruning, enabled=True, map_keep_ratio=map_keep_ratio, selective_keep_ratios=selective_keep_ratios
    )
    return config.replace(pruning=pruning)


def schedule_name(config: VppConfig) -> str:
    """"dense" for an unpruned model, the name of a known schedule, else "custom"."""
    pruning = config.pruning
    if not pruning.enabled:
        return DENSE
    for name, (map_ratio, selective) in SCHEDULES.items():
        if _close(pruning.map_keep_ratio, map_ratio) and len(selective) == len(pruning.selective_keep_ratios) and all(
            _close(a, b) for a, b in zip(selective, pruning.selective_keep_ratios)
        ):
            return name
    return CUSTOM


def schedule_summary(config: VppConfig) -> dict[str, Any]:
    """What `vpp info` shows: name, the trained ratios, per-block fractions and their mean (the nominal PKR)."""
    fractions = config.pruning.trained_fractions(config.vit.depth)
    summary: dict[str, Any] = {"name": schedule_name(config), "nominal_keep_ratio": round(sum(fractions) / len(fractions), 4)}
    if config.pruning.enabled:
        summary.update(
            map_block=config.pruning.map_block,
            map_keep_ratio=config.pruning.map_keep_ratio,
            selective_blocks=list(config.pruning.selective_blocks),
            selective_keep_ratios=list(config.pruning.selective_keep_ratios),
            block_fractions=[round(f, 4) for f in fractions],
        )
    return summary


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, abs_tol=1e-6)
