"""YouTube-VIS results: one entry per track with a compressed RLE (or null) for every frame.

Format (see docs/ytvis-eval.md): `[{"video_id", "category_id", "score", "segmentations":
[{"size": [h, w], "counts": str} | null, ...]}, ...]`, one segmentation per processed frame.
A track's score is the mean of its per-frame scores, its category the majority vote of its
per-frame labels (`TrackAccumulator`).
"""

from __future__ import annotations

import json
import os
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vppcli.errors import OutputError
from vppcli.model.tracker import TrackAccumulator
from vppcli.outputs.atomic import AtomicFile
from vppcli.outputs.base import FrameRecord, VideoMeta
from vppcli.outputs.records import InstanceRecord, instance_records
from vppcli.results import FrameInstances


class YtvisCollector:
    """Builds the YouTube-VIS entries of one video from its frames, streamed in order.

    Memory stays at three integers per (track, frame where it appears): the RLE strings go to an
    anonymous temporary file (in `spool_dir`, default the system's temporary directory) and are
    read back when the entries are assembled.
    """

    def __init__(self, video_id: int, category_ids: tuple[int, ...], spool_dir: Path | None = None) -> None:
        self.video_id = video_id
        self._category_ids = category_ids
        self._accumulator = TrackAccumulator()
        try:
            self._spool = tempfile.TemporaryFile(dir=spool_dir)
        except OSError as error:
            where = spool_dir or tempfile.gettempdir()
            raise OutputError(f"cannot create a temporary file in {where}: {error.strerror or error}") from error
        # track id -> flat (frame position, spool offset, length) triples
        self._appearances: dict[int, array[int]] = {}
        self._num_frames = 0
        self._size: list[int] | None = None

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def add(self, instances: FrameInstances) -> None:
        """Add the next processed frame (also one without instances: it becomes null everywhere)."""
        self._add(instances, instance_records(instances))

    def add_frame(self, record: FrameRecord) -> None:
        """`add` for a frame whose records other writers may already have computed."""
        self._add(record.instances, record.instance_records)

    def _add(self, instances: FrameInstances, records: list[InstanceRecord]) -> None:
        size = list(instances.image_size)
        if self._size is None:
            self._size = size
        elif size != self._size:
            raise ValueError(f"frame {instances.frame_index} is {size[0]}x{size[1]}, the video {self._size}")
        if len({record.track_id for record in records}) != len(records):
            raise ValueError(f"frame {instances.frame_index} has a track id twice")
        self._spool.seek(0, os.SEEK_END)
        for record in records:
            counts = str(record.rle["counts"]).encode("ascii")
            offset = self._spool.tell()
            self._spool.write(counts)
            triples = self._appearances.setdefault(record.track_id, array("q"))
            triples.extend((self._num_frames, offset, len(counts)))
        self._accumulator.add(instances)
        self._num_frames += 1

    def iter_results(self) -> Iterator[dict[str, Any]]:
        """The entries one at a time, ordered by the track's first appearance (only the current
        entry's segmentations are in memory)."""
        self._spool.flush()
        size = list(self._size or ())
        for summary in self._accumulator.summaries():
            segmentations: list[dict[str, Any] | None] = [None] * self._num_frames
            triples = self._appearances[summary.track_id]
            for position, offset, length in zip(triples[0::3], triples[1::3], triples[2::3]):
                self._spool.seek(offset)
                counts = self._spool.read(length).decode("ascii")
                segmentations[position] = {"size": list(size), "counts": counts}
            yield {
                "video_id": self.video_id,
                "category_id": self._category_ids[summary.label],
                "score": summary.score,
                "segmentations": segmentations,
            }

    def results(self) -> list[dict[str, Any]]:
        """All entries of the video, ordered by the track's first appearance."""
        return list(self.iter_results())

    def close(self) -> None:
        """Release the spool file; the collector cannot be used afterwards."""
        self._spool.close()


def write_results(entries: Iterator[dict[str, Any]], path: Path) -> Path:
    """Write a YouTube-VIS results list atomically, one entry per line."""
    with AtomicFile(path) as handle:
        _write_entries(entries, handle)
    return path


def _write_entries(entries: Iterator[dict[str, Any]], handle: IO[str]) -> None:
    handle.write("[")
    for count, entry in enumerate(entries):
        handle.write(("," if count else "") + "\n" + json.dumps(entry, separators=(",", ":")))
    handle.write("\n]\n")


class YtvisWriter:
    """Writes `ytvis.json`: the YouTube-VIS results list of one video."""

    def __init__(self, meta: VideoMeta, path: Path) -> None:
        self._file = AtomicFile(path)
        # The spool sits next to the output: large videos should not fill a small /tmp.
        self._collector = YtvisCollector(meta.video_id, meta.category_ids, spool_dir=path.parent)

    def write_frame(self, record: FrameRecord) -> None:
        self._collector.add_frame(record)

    def finish(self) -> None:
        with self._file.filling() as handle:
            _write_entries(self._collector.iter_results(), handle)
        self._collector.close()

    def commit(self) -> list[Path]:
        return [self._file.commit()]

    def abort(self) -> None:
        self._collector.close()
        self._file.discard()
