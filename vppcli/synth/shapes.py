"""The object categories: one shape each, rendered as an exact boolean sprite, and the random
textured appearance an object of any category may wear.

A sprite is a square canvas of `SPRITE_SIZE` pixels in which the shape fills a disc of radius
about 0.9 (in units of half the canvas). Objects are drawn by warping their sprite into the
frame with nearest-neighbour sampling, so the ground-truth mask is exactly what was drawn.
Colour and texture are drawn independently of the category: only the outline tells classes apart.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

SPRITE_SIZE = 160  # pixels; objects are at most ~100 px in a 240x320 frame, so sprites are downscaled
PATTERNS = ("solid", "stripes", "checker", "gradient", "blotches")
_SUBPIXEL_BITS = 4  # fillPoly fixed-point precision, so polygon corners are not snapped to pixels


@dataclass(frozen=True)
class Sprite:
    """One object's look in its own frame.

    mask:  [S, S] bool, the shape (S = SPRITE_SIZE).
    image: [S, S, 3] uint8 RGB texture (defined everywhere; only `mask` pixels are drawn).
    """

    mask: np.ndarray
    image: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates u (right), v (down) in [-1, 1]: two [S, S] float32 arrays."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(axis, axis)


def _polygon(points: list[tuple[float, float]], size: int) -> np.ndarray:
    """[S, S] bool: the polygon with vertices given in [-1, 1] coordinates."""
    scale = size / 2 * (1 << _SUBPIXEL_BITS)
    # A vertex at u maps to pixel coordinate (u + 1) * S / 2 - 0.5 on the pixel-centre grid.
    vertices = np.array([[(u + 1) * scale - 0.5 * (1 << _SUBPIXEL_BITS),
                          (v + 1) * scale - 0.5 * (1 << _SUBPIXEL_BITS)] for u, v in points])
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [np.round(vertices).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return canvas.astype(bool)


def _regular(count: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(count) / count)
    return [(radius * float(np.cos(a)), radius * float(np.sin(a))) for a in angles]


def _disc(size: int) -> np.ndarray:
    u, v = _grid(size)
    return u * u + v * v <= 0.88 ** 2


def _square(size: int) -> np.ndarray:
    u, v = _grid(size)
    return np.maximum(np.abs(u), np.abs(v)) <= 0.68


def _triangle(size: int) -> np.ndarray:
    return _polygon([(x, y + 0.12) for x, y in _regular(3, 0.95, -90)], size)


def _star(size: int) -> np.ndarray:
    outer, inner = _regular(5, 0.95, -90), _regular(5, 0.4, -54)
    return _polygon([p for pair in zip(outer, inner) for p in pair], size)


def _ring(size: int) -> np.ndarray:
    u, v = _grid(size)
    r2 = u * u + v * v
    return (r2 <= 0.9 ** 2) & (r2 >= 0.5 ** 2)


def _cross(size: int) -> np.ndarray:
    u, v = np.abs(_grid(size)[0]), np.abs(_grid(size)[1])
    return ((u <= 0.28) & (v <= 0.9)) | ((v <= 0.28) & (u <= 0.9))


def _crescent(size: int) -> np.ndarray:
    u, v = _grid(size)
    return (u * u + v * v <= 0.9 ** 2) & ((u - 0.42) ** 2 + (v + 0.08) ** 2 >= 0.68 ** 2)


def _heart(size: int) -> np.ndarray:
    u, v = _grid(size)
    # The classic implicit heart (x^2 + y^2 - 1)^3 <= x^2 y^3 with y up, scaled into the disc.
    x, y = u / 0.8, -v / 0.8 + 0.12
    return (x * x + y * y - 1) ** 3 <= x * x * y ** 3


def _chevron(size: int) -> np.ndarray:
    return _polygon([(-0.7, -0.8), (-0.12, -0.8), (0.78, 0.0), (-0.12, 0.8), (-0.7, 0.8), (0.16, 0.0)], size)


def _arrow(size: int) -> np.ndarray:
    return _polygon([(-0.92, -0.2), (0.1, -0.2), (0.1, -0.6), (0.92, 0.0), (0.1, 0.6), (0.1, 0.2), (-0.92, 0.2)],
                    size)


# Category name -> shape renderer. The order fixes the category ids (1..K); the names become the
# class names of the model trained on this data, so they never change once released.
SHAPES: dict[str, Callable[[int], np.ndarray]] = {
    "disc": _disc, "square": _square, "triangle": _triangle, "star": _star, "ring": _ring,
    "cross": _cross, "crescent": _crescent, "heart": _heart, "chevron": _chevron, "arrow": _arrow,
}
CATEGORIES: tuple[str, ...] = tuple(SHAPES)

_MASK_CACHE: dict[str, np.ndarray] = {}


def shape_mask(category: str) -> np.ndarray:
    """[S, S] bool sprite of a category (computed once per process; do not modify)."""
    if category not in _MASK_CACHE:
        mask = SHAPES[category](SPRITE_SIZE)
        mask.flags.writeable = False
        _MASK_CACHE[category] = mask
    return _MASK_CACHE[category]


def random_colour(rng: np.random.Generator, hue: float | None = None) -> np.ndarray:
    """[3] float32 RGB in [0, 255]; saturated enough to be an object, never pure grey."""
    h = rng.random() if hue is None else hue % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0))
    return np.array([r, g, b], np.float32) * 255


def _pattern(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """[S, S] float32 weight in [0, 1] of the second colour."""
    u, v = _grid(size)
    angle = rng.uniform(0, np.pi)
    along = u * np.cos(angle) + v * np.sin(angle)
    if kind == "stripes":
        period = rng.uniform(0.15, 0.5)
        return (np.sin(along / period * 2 * np.pi) > rng.uniform(-0.5, 0.5)).astype(np.float32)
    if kind == "checker":
        across = -u * np.sin(angle) + v * np.cos(angle)
        cells = rng.uniform(2.5, 7.0)
        return ((np.floor(along * cells) + np.floor(across * cells)) % 2).astype(np.float32)
    if kind == "gradient":
        return np.clip((along + 1) / 2, 0, 1).astype(np.float32)
    if kind == "blotches":
        coarse = rng.random((rng.integers(3, 8),) * 2).astype(np.float32)
        return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    return np.zeros((size, size), np.float32)


def random_sprite(rng: np.random.Generator, category: str) -> Sprite:
    """A category's shape in a random colour pair, pattern, shading and grain."""
    size = SPRITE_SIZE
    first = random_colour(rng)
    second = random_colour(rng, hue=rng.random() if rng.random() < 0.6 else None)
    weight = _pattern(rng, str(rng.choice(PATTERNS)), size)[..., None]
    image = first * (1 - weight) + second * weight
    # Light from one side, so objects look like objects rather than flat stickers.
    u, v = _grid(size)
    light = rng.uniform(0, 2 * np.pi)
    shade = 1 + rng.uniform(0.05, 0.3) * (u * np.cos(light) + v * np.sin(light))
    image = image * shade[..., None] + rng.normal(0, rng.uniform(2, 10), (size, size, 1)).astype(np.float32)
    return Sprite(shape_mask(category), np.clip(image, 0, 255).astype(np.uint8))
