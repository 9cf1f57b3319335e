"""Which frames form a training clip: a key frame and references around it, drawn from an
explicit per-sample generator (no hidden counters, so a sample is a pure function of its seed).

Choices (reference-architecture §4.2, training-anchors §1 and §6.7):
- Video: weighted by its number of frames, as in the reference, where every annotated frame is a
  key frame once per epoch; a uniform draw over videos would over-train short videos.
- Key frame: uniform among the video's frames where at least one object is visible; any frame
  of a video without a visible object (such a clip teaches "no object").
- References: `num_frames - 1` frames drawn uniformly **without** replacement from
  [key - window, key + window] \\ {key}, clipped to the video. When that window holds too few
  frames the rest come, still without replacement, from the rest of the video; only a video
  shorter than the clip repeats frames (a 1-frame video gives a clip of one frame repeated).
- The clip is sorted by frame index: the model consumes it in temporal order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vppcli.errors import UsageError


@dataclass(frozen=True)
class ClipConfig:
    """What a training clip looks like.

    num_frames: frames per clip (3 for the VPP stage: key + 2 refs; 2 for the dense stage).
    window:     references lie within +-window frames of the key frame (clipped to the video).
    long_sides: long side of the resized frames, one drawn per clip (one value: fixed size;
                several: multi-scale training).
    flip_prob:  probability of a horizontal flip, one draw per clip.
    """

    num_frames: int = 3
    window: int = 5
    long_sides: tuple[int, ...] = (960,)
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise UsageError(f"a clip needs at least 1 frame, got num_frames={self.num_frames}")
        if self.window < 1:
            raise UsageError(f"the reference window must be at least 1 frame, got {self.window}")
        if not self.long_sides or any(side < 1 for side in self.long_sides):
            raise UsageError(f"long sides must be positive sizes, got {self.long_sides}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise UsageError(f"flip probability must be in [0, 1], got {self.flip_prob}")


def choose_video(rng: np.random.Generator, frame_offsets: np.ndarray) -> int:
    """Position of a video, drawn with probability proportional to its length.

    Args:
        frame_offsets: [V + 1] cumulative frame counts, starting at 0.
    """
    frame = int(rng.integers(int(frame_offsets[-1])))
    return int(np.searchsorted(frame_offsets, frame, side="right")) - 1


def choose_key(rng: np.random.Generator, length: int, visible: Sequence[int]) -> int:
    """A key frame: uniform over `visible` (frames with an object), or over all frames if none."""
    if visible:
        return int(visible[int(rng.integers(len(visible)))])
    return int(rng.integers(length))


def choose_references(rng: np.random.Generator, length: int, key: int, count: int, window: int) -> list[int]:
    """`count` reference frames for `key` in a video of `length` frames (see the module docstring)."""
    near = [f for f in range(max(0, key - window), min(length, key + window + 1)) if f != key]
    chosen = _without_replacement(rng, near, count)
    if len(chosen) < count:
        far = [f for f in range(length) if f != key and abs(f - key) > window]
        chosen += _without_replacement(rng, far, count - len(chosen))
    if len(chosen) < count:  # the video is shorter than the clip
        chosen += [int(f) for f in rng.integers(length, size=count - len(chosen))]
    return chosen


def choose_clip(rng: np.random.Generator, length: int, visible: Sequence[int], config: ClipConfig) -> tuple[int, ...]:
    """Frame indices of one clip of `config.num_frames` frames, ascending."""
    key = choose_key(rng, length, visible)
    return tuple(sorted([key, *choose_references(rng, length, key, config.num_frames - 1, config.window)]))


def _without_replacement(rng: np.random.Generator, candidates: list[int], count: int) -> list[int]:
    if count <= 0 or not candidates:
        return []
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [candidates[int(i)] for i in picked]
