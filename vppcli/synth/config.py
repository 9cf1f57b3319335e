"""The generator's settings, checked up front, and the seed rule.

Seed rule: video `index` (0-based) of split `split` is drawn from its own generator,
`numpy.random.SeedSequence([seed, SPLIT_CODES[split], index])`. A video therefore does not
depend on the number of worker processes or on the other videos, can be regenerated alone, and
two splits (or two seeds) never share a stream. A demo or test clip that must be unseen in
training comes from a seed that training never used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vppcli.errors import UsageError
from vppcli.synth.backgrounds import BackgroundSource

GENERATOR_VERSION = 1  # bumped whenever the same seed would render different videos
SPLIT_CODES = {"train": 0, "valid": 1}
MAX_SIDE = 4096
MIN_SIDE = 32
MAX_OBJECTS = 10


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; every value is checked when the config is made (UsageError).

    videos, frames: videos in the split and frames per video.
    height, width: frame size in pixels.
    seed: the dataset seed (see the module docstring), a non-negative integer.
    split: "train" or "valid".
    min_objects, max_objects: objects per video, drawn uniformly in this range.
    speed: factor on object and camera speed (0 = static objects).
    occlusion: chance for each object after the first to cross another one's path.
    reappear: chance that one object of a video is hidden for 2-4 frames and comes back.
    jpeg_quality: JPEG quality of the frames (1-100).
    backgrounds: "photos" (scikit-image's sample photographs), "procedural", or "auto".
    """

    videos: int = 100
    frames: int = 24
    height: int = 240
    width: int = 320
    seed: int = 0
    split: str = "train"
    min_objects: int = 2
    max_objects: int = 5
    speed: float = 1.0
    occlusion: float = 0.5
    reappear: float = 0.5
    jpeg_quality: int = 90
    backgrounds: BackgroundSource = "auto"

    def __post_init__(self) -> None:
        _integer("--videos", self.videos, 1, 1_000_000)
        _integer("--frames", self.frames, 1, 10_000)
        _integer("--size height", self.height, MIN_SIDE, MAX_SIDE)
        _integer("--size width", self.width, MIN_SIDE, MAX_SIDE)
        _integer("--seed", self.seed, 0, 2 ** 63 - 1)
        _integer("--jpeg-quality", self.jpeg_quality, 1, 100)
        _integer("--objects minimum", self.min_objects, 1, MAX_OBJECTS)
        _integer("--objects maximum", self.max_objects, 1, MAX_OBJECTS)
        if self.min_objects > self.max_objects:
            raise UsageError(f"--objects: the minimum {self.min_objects} is above the maximum {self.max_objects}")
        if self.split not in SPLIT_CODES:
            raise UsageError(f"unknown split {self.split!r}; choose {' or '.join(SPLIT_CODES)}")
        _fraction("--speed", self.speed, 0.0, 10.0)
        _fraction("--occlusion", self.occlusion, 0.0, 1.0)
        _fraction("--reappear", self.reappear, 0.0, 1.0)
        if self.backgrounds not in ("auto", "photos", "procedural"):
            raise UsageError(f"unknown --backgrounds {self.backgrounds!r}; choose auto, photos or procedural")

    def video_seed(self, index: int) -> np.random.SeedSequence:
        """The seed sequence of video `index` (0-based) of this split; see the seed rule."""
        return np.random.SeedSequence([self.seed, SPLIT_CODES[self.split], index])

    def knobs(self) -> dict[str, Any]:
        """The settings as plain JSON values (for the annotation file's `info`)."""
        return asdict(self)


def _integer(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise UsageError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _fraction(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise UsageError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
