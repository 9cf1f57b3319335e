"""Background canvases: real photographs shipped inside scikit-image (optional), or procedural
scenes (fractal noise, tiles, clutter) when it is not installed or not wanted.

The photographs are the CC0 / public-domain samples in scikit-image's wheel (nothing is
downloaded): astronaut (NASA), chelsea, coffee, camera (CC0), rocket (SpaceX, public domain),
brick, grass, gravel (CC0 textures, grayscale: tinted here).
"""

from __future__ import annotations

import functools
from typing import Literal

import cv2
import numpy as np

from vppcli.errors import UsageError

BackgroundSource = Literal["auto", "photos", "procedural"]
PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket", "brick", "grass", "gravel")
_PHOTO_SHARE = 0.75  # with photos available, the rest of the videos still get procedural scenes


@functools.lru_cache(maxsize=1)
def photos_version() -> str | None:
    """scikit-image's version when its sample photographs can be loaded, else None."""
    try:
        import skimage
        import skimage.data  # noqa: F401
    except ImportError:
        return None
    return str(skimage.__version__)


def resolve_source(source: BackgroundSource) -> Literal["photos", "procedural"]:
    """"auto" -> photos when scikit-image is installed, else procedural scenes.

    Raises:
        UsageError: "photos" without scikit-image.
    """
    if source == "procedural" or (source == "auto" and photos_version() is None):
        return "procedural"
    if photos_version() is None:
        raise UsageError("--backgrounds photos needs scikit-image: pip install 'vppcli[synth]'")
    return "photos"


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """[h, w, 3] uint8 RGB, or [h, w] uint8 for the grayscale textures; cached per process."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    image.flags.writeable = False
    return image


def make_background(rng: np.random.Generator, height: int, width: int,
                    source: Literal["photos", "procedural"]) -> np.ndarray:
    """[height, width, 3] uint8 RGB canvas for one video."""
    if source == "photos" and rng.random() < _PHOTO_SHARE:
        return _from_photo(rng, str(rng.choice(PHOTOS)), height, width)
    return _procedural(rng, height, width)


def _from_photo(rng: np.random.Generator, name: str, height: int, width: int) -> np.ndarray:
    """A random crop of a photograph, resized, flipped, colour-jittered."""
    photo = _photo(name)
    ph, pw = photo.shape[:2]
    # The largest crop of the canvas' aspect ratio, shrunk at random (zooming into the photo).
    crop_h = min(ph, pw * height / width) * rng.uniform(0.55, 1.0)
    crop_w = crop_h * width / height
    top, left = rng.uniform(0, ph - crop_h), rng.uniform(0, pw - crop_w)
    crop = photo[int(top):int(top + crop_h), int(left):int(left + crop_w)]
    image = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    if image.ndim == 2:  # grayscale texture: tint between a dark and a light colour
        dark, light = _muted_colour(rng, 0.1, 0.5), _muted_colour(rng, 0.6, 1.0)
        weight = image[..., None] / 255
        image = dark * (1 - weight) + light * weight
    elif rng.random() < 0.3:  # a different colour cast, so photos recur in new colours
        image = image[..., rng.permutation(3)]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    image = (image - 128) * rng.uniform(0.7, 1.2) + 128 + rng.uniform(-25, 25)
    return np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))


def _muted_colour(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """[3] float32 RGB in [0, 255], brightness in [low, high], low saturation (a backdrop, not an object)."""
    grey = rng.uniform(low, high)
    return np.clip(grey + rng.normal(0, 0.08, 3), 0, 1).astype(np.float32) * 255


def fractal_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 5,
                  roughness: float = 0.55) -> np.ndarray:
    """[height, width] float32 in [0, 1]: value noise summed over octaves (clouds, terrain)."""
    total = np.zeros((height, width), np.float32)
    amplitude, weight = 1.0, 0.0
    for octave in range(octaves):
        cells = 2 ** (octave + 1)
        coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
        total += amplitude * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        weight += amplitude
        amplitude *= roughness
    total /= weight
    low, high = total.min(), total.max()
    return (total - low) / max(high - low, 1e-6)


def _palette_map(rng: np.random.Generator, value: np.ndarray) -> np.ndarray:
    """[H, W, 3] float32: `value` ([H, W] in [0, 1]) through a random 3-colour gradient."""
    stops = np.stack([_muted_colour(rng, 0.05, 0.45), _muted_colour(rng, 0.3, 0.7), _muted_colour(rng, 0.55, 0.95)])
    if rng.random() < 0.5:  # one saturated stop: foliage, sand, sky...
        stops[1] = stops[1] * 0.5 + rng.uniform(0, 255, 3).astype(np.float32) * 0.5
    value = value[..., None]
    lower = stops[0] + (stops[1] - stops[0]) * np.clip(value * 2, 0, 1)
    return lower + (stops[2] - stops[1]) * np.clip(value * 2 - 1, 0, 1)


def _tiles(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W, 3] float32: a brick or tile wall with mortar lines and per-tile colour."""
    tile_h = int(rng.uniform(0.06, 0.18) * height) + 4
    tile_w = int(tile_h * rng.uniform(1.0, 3.0))
    base, mortar = _muted_colour(rng, 0.3, 0.8), _muted_colour(rng, 0.2, 0.9)
    rows, cols = height // tile_h + 2, width // tile_w + 2
    colours = base + rng.normal(0, 18, (rows, cols, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    row = ys // tile_h
    shifted = xs + (row % 2) * (tile_w // 2) * (rng.random() < 0.7)  # staggered bricks, or a grid
    image = colours[row, shifted // tile_w]
    joint = max(1, tile_h // 10)
    line = ((ys % tile_h) < joint) | ((shifted % tile_w) < joint)
    image[line] = mortar
    return image


def _clutter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Irregular blobs (thresholded noise) and strokes on `image` ([H, W, 3] float32): scene-like
    clutter that resembles none of the category shapes (no discs, no polygons)."""
    height, width = image.shape[:2]
    layer = image.copy()
    for _ in range(int(rng.integers(1, 4))):
        blobs = fractal_noise(rng, height, width, octaves=4) > rng.uniform(0.6, 0.8)
        colour = _muted_colour(rng, 0.1, 0.9)
        layer[blobs] = layer[blobs] * 0.3 + colour * 0.7
    for _ in range(int(rng.integers(0, 6))):
        colour = tuple(float(c) for c in _muted_colour(rng, 0.1, 0.9))
        points = rng.uniform([0, 0], [width, height], (int(rng.integers(3, 6)), 2))
        cv2.polylines(layer, [points.astype(np.int32)], False, colour, int(rng.integers(1, 6)), cv2.LINE_AA)
    return cv2.GaussianBlur(layer, (0, 0), rng.uniform(0.8, 3.0))


def _procedural(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8: fractal terrain, a horizon scene, or a wall, with clutter and grain."""
    kind = rng.choice(("fractal", "horizon", "tiles"))
    if kind == "tiles":
        image = _tiles(rng, height, width)
    else:
        image = _palette_map(rng, fractal_noise(rng, height, width, octaves=7, roughness=rng.uniform(0.45, 0.75)))
        if kind == "horizon":  # sky gradient above a horizon line
            horizon = int(rng.uniform(0.25, 0.6) * height)
            top, bottom = _muted_colour(rng, 0.5, 1.0), _muted_colour(rng, 0.3, 0.8)
            ramp = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
            image[:horizon] = top * (1 - ramp) + bottom * ramp + (image[:horizon] - 128) * 0.15
    if rng.random() < 0.8:
        image = _clutter(rng, image)
    shading = fractal_noise(rng, height, width, octaves=3)[..., None] * 0.4 + 0.8
    image = image * shading + rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
