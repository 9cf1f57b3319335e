"""One small reader interface over videos, frame directories and images.

Every source yields `Frame`s one at a time (never a whole video in memory) and describes itself
with a `VideoInfo`. Problems the user can fix raise `InputError` with a one-line message naming
the input; a video that cannot be decoded past some frame ends there, with a warning naming the
frame (`FrameSource.ended_at`).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from vppcli.errors import UsageError

logger = logging.getLogger(__name__)

# Used where a source states no frame rate (frame directories, broken headers): what most players assume.
DEFAULT_FPS = 30.0


@dataclass(frozen=True)
class VideoInfo:
    """name: a short name for outputs (file stem or directory name); path: the input as given;
    num_frames: frames in the source (as reported by the container for videos); fps: frames per
    second of the source; height/width: frame size; backend: which reader decodes it ("decord",
    "opencv", "images" for a frame directory, "image" for one image file)."""

    name: str
    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    backend: str


@dataclass(frozen=True)
class Frame:
    """index: position in the source (0-based); timestamp: seconds from the start of the source;
    image: [H, W, 3] uint8 RGB; file: for frames stored as image files, the file's name as the
    outputs give it ("<directory>/<file>" in a frame directory, "<file>" for an image), else None."""

    index: int
    timestamp: float
    image: np.ndarray
    file: str | None = None


@dataclass(frozen=True)
class FrameSelection:
    """Which frames to process: from `start`, every `stride`-th, at most `max_frames` of them."""

    start: int = 0
    max_frames: int | None = None
    stride: int = 1

    def __post_init__(self) -> None:
        if self.start < 0:
            raise UsageError(f"--start must be >= 0, got {self.start}")
        if self.stride < 1:
            raise UsageError(f"--stride must be >= 1, got {self.stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise UsageError(f"--max-frames must be >= 1, got {self.max_frames}")

    def indices(self, num_frames: int) -> range:
        """Source indices to process for a source of `num_frames` frames."""
        stop = num_frames
        if self.max_frames is not None:
            stop = min(stop, self.start + self.max_frames * self.stride)
        return range(self.start, max(stop, self.start), self.stride)

    def count(self, num_frames: int) -> int:
        return len(self.indices(num_frames))


class FrameSource(abc.ABC):
    """A video-like sequence of RGB frames. Use as a context manager, or call `close()`.

    `ended_at`: after `frames()`, the first selected frame that could not be decoded when the
    stream ended early (truncated or damaged video; the frames before it were yielded), else None.
    """

    info: VideoInfo
    ended_at: int | None = None

    @abc.abstractmethod
    def frames(self, selection: FrameSelection = FrameSelection()) -> Iterator[Frame]:
        """Decode the selected frames in order, one at a time."""

    def checked(self, frames: Iterator[Frame], indices: Sequence[int], selected: int) -> Iterator[Frame]:
        """`frames`, which should be `indices`, the end of a selection of `selected` frames; when
        they stop short, the video ends there: warn, naming the frame, and set `ended_at`."""
        decoded = 0
        for frame in frames:
            decoded += 1
            yield frame
        if decoded < len(indices):
            self.ended_at = indices[decoded]
            done = selected - len(indices) + decoded
            logger.warning("%s: cannot decode frame %d (truncated or corrupt video); the video ends there, "
                           "after %d of %d selected frames", self.info.path, self.ended_at, done, selected)

    def close(self) -> None:
        """Release the decoder (idempotent)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
