"""What every output writer gets and must do.

A writer receives the frames of one video in order (`write_frame`), then either `close()`
(commit: files appear atomically under their final names) or `abort()` (remove everything it
started). A writer never leaves a half-written file under a final name, whatever happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vppcli.results import FrameInstances


@dataclass(frozen=True)
class VideoMeta:
    """The video being written.

    name: output stem (e.g. the input file's stem).
    source: the input as the user gave it.
    height, width: original frame size (masks have this size).
    fps: frame rate of the written sequence (original fps / stride, so timing is preserved).
    video_id: id used in YouTube-VIS/COCO records (position of the input in the run, from 1).
    class_names / category_ids: label i -> (class_names[i], category_ids[i]).
    """

    name: str
    source: str
    height: int
    width: int
    fps: float
    video_id: int
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]


@dataclass(frozen=True)
class FrameRecord:
    """One processed frame.

    index: frame index in the source video (original numbering, also with --start/--stride).
    timestamp: seconds from the start of the source video.
    image: [H, W, 3] uint8 RGB, the original frame.
    instances: the tracked instances to write (on the CPU, already filtered by score/class);
        `instances.frame_index` counts processed frames (0, 1, 2, ...), `index` is the source's.
    """

    index: int
    timestamp: float
    image: np.ndarray
    instances: FrameInstances


class OutputWriter(Protocol):
    def write_frame(self, record: FrameRecord) -> None: ...

    def close(self) -> list[Path]:
        """Finish and commit; returns the files (or directories) written."""
        ...

    def abort(self) -> None:
        """Remove every temporary file; nothing under a final name is created."""
        ...
