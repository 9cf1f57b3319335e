"""The fixed track-id palette shared by the overlay video and the PNG masks.

A colour depends on the track id alone (no randomness, no per-run state), so an id keeps its
colour across frames, runs and output formats. Hues step by the golden ratio, which keeps
consecutive ids far apart on the colour wheel; saturation and brightness alternate as well so
that ids whose hues come close again still differ.
"""

from __future__ import annotations

import colorsys

import numpy as np

BACKGROUND = (0, 0, 0)
_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949
_SATURATIONS = (0.85, 0.6)
_VALUES = (1.0, 0.8, 0.9)


def track_color(track_id: int) -> tuple[int, int, int]:
    """RGB colour of a track id (ids start at 1; 0 is the background)."""
    if track_id <= 0:
        return BACKGROUND
    hue = (track_id * _GOLDEN_RATIO_CONJUGATE) % 1.0
    saturation = _SATURATIONS[track_id % len(_SATURATIONS)]
    value = _VALUES[track_id % len(_VALUES)]
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def palette(size: int = 256) -> np.ndarray:
    """[size, 3] uint8: row i is the colour of track id i (row 0 the background)."""
    return np.array([track_color(i) for i in range(size)], dtype=np.uint8)


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `background` (Rec. 601 luma)."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)
