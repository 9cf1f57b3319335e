"""What every output writer gets and must do.

A writer receives the frames of one video in order (`write_frame`), then ends in two phases, so
that the formats of a video appear together or not at all:

- `finish()` does all the work that can fail (flushing, waiting for an encoder, assembling
  files under their temporary names, checking that nothing is in the way of the final names);
- `commit()` only renames the temporaries into place: called once every writer of the video
  has finished, it should not fail.

`abort()` removes the temporaries, before or after `finish()`, and is a no-op after `commit()`.
A writer never leaves a half-written file under a final name, whatever happens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vppcli.outputs import records
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
    still: an image input: the overlay and the pruning view are images, not videos.
    """

    name: str
    source: str
    height: int
    width: int
    fps: float
    video_id: int
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    still: bool = False


@dataclass(frozen=True)
class FrameRecord:
    """One processed frame.

    index: frame index in the source video (original numbering, also with --start/--stride).
    timestamp: seconds from the start of the source video.
    image: [H, W, 3] uint8 RGB, the original frame.
    instances: the tracked instances to write (on the CPU, already filtered by score/class);
        `instances.frame_index` counts processed frames (0, 1, 2, ...), `index` is the source's.
    file: the source image's name ("<directory>/<file>", or "<file>" for an image input) when the
        frames are image files; None for videos.
    """

    index: int
    timestamp: float
    image: np.ndarray
    instances: FrameInstances
    file: str | None = None

    @functools.cached_property
    def instance_records(self) -> list[records.InstanceRecord]:
        """Ids, boxes, areas and RLEs of `instances`, computed at the first use and then shared
        by the writers of the frame (encoding full-size masks dominates their cost)."""
        return records.instance_records(self.instances)


class OutputWriter(Protocol):
    def write_frame(self, record: FrameRecord) -> None: ...

    def finish(self) -> None:
        """Do everything that can fail, leaving complete outputs under temporary names.

        Raises:
            OutputError: an output cannot be written; the caller then calls `abort()`.
        """
        ...

    def commit(self) -> list[Path]:
        """After `finish()`: rename the outputs into place; returns the files (or directories)."""
        ...

    def abort(self) -> None:
        """Remove every temporary file; nothing under a final name is created."""
        ...
