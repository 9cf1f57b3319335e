"""Checks of the settings every command shares (input size, keep ratio), made before any work.

Each is one function, used by the CLI before a model is loaded and by the API that receives the
value, so that a value that cannot work is refused up front with one line, never discovered by
a crash half-way through (an empty output directory, a half-started evaluation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vppcli.config import VppConfig
from vppcli.errors import UsageError

MIN_SIDE = 32
# The models are trained at a long side of 960. At 4096 one fp32 frame of the ViT-Adapter Tiny
# needs a few GB; far beyond it the first allocation fails after a minute of decoding and resizing
# (100000 asks for 67.5 GB for the resized frame alone), so such sizes are refused up front.
MAX_LONG_SIDE = 4096
_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class InputSize:
    """A network input size as given: `960` (a long side) or `544x960` (height x width)."""

    long_side: int
    shape: tuple[int, int] | None = None

    def __str__(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}" if self.shape else str(self.long_side)


def parse_size(text: str, option: str = "--size") -> InputSize:
    """`N` or `HxW`, each side in [MIN_SIDE, MAX_LONG_SIDE]."""
    match = _SIZE.match(text)
    if match is None:
        raise UsageError(f"{option} must be a long side N or HEIGHTxWIDTH (e.g. 960 or 544x960), got {text!r}")
    sides = [int(group) for group in match.groups() if group is not None]
    for side in sides:
        check_side(side, option)
    return InputSize(max(sides), (sides[0], sides[1]) if len(sides) == 2 else None)


def check_side(side: int, option: str = "--size") -> None:
    if not MIN_SIDE <= side <= MAX_LONG_SIDE:
        raise UsageError(f"{option} sides must be between {MIN_SIDE} and {MAX_LONG_SIDE} pixels, got {side}")


def check_keep_ratio(keep_ratio: float | None, config: VppConfig | None = None, option: str = "--keep-ratio") -> None:
    """A keep ratio the model's budgets can reach: in (0, 1] and above the always-dense blocks'
    share (block 0 of every VPP model, so r > 1/12). `config` None checks what holds for every
    model vppcli builds; with the config the exact floor of its schedule."""
    if keep_ratio is None:
        return
    if not 0.0 < keep_ratio <= 1.0:
        raise UsageError(f"{option} must be in (0, 1], got {keep_ratio}")
    if config is not None and not config.pruning.enabled:
        return  # a dense model ignores the ratio
    depth = config.vit.depth if config is not None else 12
    fractions = config.pruning.trained_fractions(depth) if config is not None else (1.0,)
    dense = sum(fraction >= 1.0 for fraction in fractions)
    floor = dense / depth
    if keep_ratio <= floor and keep_ratio < 1.0:
        raise UsageError(f"{option} {keep_ratio} is unreachable: {dense} of {depth} ViT blocks are always dense, "
                         f"so it must be above {floor:.4f}")
