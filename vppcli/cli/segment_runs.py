"""How `vpp segment` goes through its inputs: names first, then the videos, then one outcome.

Every input gets its output directory before any video is segmented (`plan`): the names (NAME,
NAME-2, ..., the rerun rule) are decided once, by the one process that plans, so the processes of
a sharded run never race for one. The planned inputs are then segmented in this process, or split
round robin (input order) over the ranks of a process group; each rank writes only its inputs'
directories and keeps its inputs' jsonl lines, and `merge` puts the ranks' outcomes back in input
order, so the summary, the exit code and stdout are those of one process.
"""

from __future__ import annotations

import dataclasses
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from vppcli.cli.app import error_line
from vppcli.cli.progress import RunProgress
from vppcli.errors import EXIT_OK, VppError

if TYPE_CHECKING:
    from vppcli.segmenter import Segmenter, VideoResult
    from vppcli.video import FrameSelection


@dataclass(frozen=True)
class Failure:
    input: str
    error: str
    exit_code: int

    @classmethod
    def reported(cls, path: str, error: VppError) -> Failure:
        """The failure of input `path`, after its one error line on stderr."""
        error_line(str(error))
        return cls(path, str(error), error.exit_code)


@dataclass(frozen=True)
class PlannedInput:
    """An input that opened, its position among all inputs (`video_id`), its name and directory."""

    video_id: int
    path: str
    name: str
    directory: Path


@dataclass(frozen=True)
class Plan:
    inputs: tuple[PlannedInput, ...]
    failures: tuple[Failure, ...]  # inputs that did not open, in input order (already reported)


@dataclass(frozen=True)
class VideoSettings:
    """How each video is read and written (the same on every rank)."""

    formats: tuple[str, ...]
    selection: FrameSelection
    backend: str
    image_fps: float
    quiet: bool


@dataclass
class RunOutcome:
    """What the whole call did, for the summary and the exit code."""

    videos: list[VideoResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The first failure's code: with several inputs, one bad input fails the run at the end."""
        return self.failures[0].exit_code if self.failures else EXIT_OK

    def fail(self, path: str, error: VppError) -> Failure:
        failure = Failure.reported(path, error)
        self.failures.append(failure)
        return failure

    def to_dict(self) -> dict[str, object]:
        from vppcli.efficiency import merged

        total = merged(v.efficiency for v in self.videos).report()
        return {
            "videos": [v.to_dict() for v in self.videos],
            "failed": [dataclasses.asdict(f) for f in self.failures],
            "frames": total.frames,
            "fps": round(total.fps, 3),
            "keep_ratio": round(total.keep_ratio, 4),
            "tracks": sum(len(v.tracks) for v in self.videos),
        }


@dataclass
class ShardOutcome:
    """One rank's inputs: results, failures (by video id) and each input's jsonl lines."""

    videos: list[VideoResult] = field(default_factory=list)
    failures: dict[int, Failure] = field(default_factory=dict)
    jsonl: dict[int, str] = field(default_factory=dict)


def read_inputs(inputs: list[str]) -> list[str]:
    """Expand `-` into the paths given one per line on stdin."""
    paths: list[str] = []
    for item in inputs:
        if item == "-":
            paths.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            paths.append(item)
    return paths


def _unique_name(name: str, taken: set[str], is_free: Callable[[str], bool] = lambda _: True) -> str:
    """`name`, else `name-2`, `name-3`, ...: the first not in `taken` for which `is_free` holds."""
    candidate, number = name, 2
    while candidate in taken or not is_free(candidate):
        candidate, number = f"{name}-{number}", number + 1
    taken.add(candidate)
    return candidate


def _unused_dir(output_dir: Path) -> Callable[[str], bool]:
    """Whether OUTPUT_DIR/NAME holds no earlier run: absent, or nothing in it but hidden files
    (a crashed run's temporaries), so that a new run never mixes its files with another's."""
    def is_free(name: str) -> bool:
        directory = output_dir / name
        if not directory.exists():
            return True
        return directory.is_dir() and all(entry.name.startswith(".") for entry in directory.iterdir())
    return is_free


@dataclass
class Naming:
    """Names of the outputs of one call: video names unique within the call, and each video's
    directory (a fresh one per run unless `exist_ok`)."""

    output_dir: Path
    exist_ok: bool
    names: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)

    def video(self, source_name: str) -> tuple[str, Path]:
        name = _unique_name(source_name, self.names)
        if self.exist_ok:
            self.dirs.add(name)
            return name, self.output_dir / name
        return name, self.output_dir / _unique_name(source_name, self.dirs, _unused_dir(self.output_dir))


def plan(paths: Sequence[str], naming: Naming, backend: str, image_fps: float, outcome: RunOutcome) -> Plan:
    """Open every input (in order) for its name and name its outputs; an input that does not open
    is reported now, before a model is loaded for nothing, and gets no name."""
    from vppcli.video import open_source

    planned: list[PlannedInput] = []
    failures: list[Failure] = []
    for video_id, path in enumerate(paths, start=1):
        try:
            with open_source(path, backend, image_fps) as source:  # type: ignore[arg-type]  # a Backend value
                name, directory = naming.video(source.info.name)
        except VppError as error:
            failures.append(outcome.fail(path, error))
            continue
        planned.append(PlannedInput(video_id, path, name, directory))
    return Plan(tuple(planned), tuple(failures))


def segment_inputs(segmenter: Segmenter, inputs: Sequence[PlannedInput], settings: VideoSettings,
                   spool: bool) -> ShardOutcome:
    """Segment `inputs` in order. jsonl goes to stdout as it comes, or with `spool` into each
    input's `jsonl` text (for the merge); a failed input is reported and the next one goes on."""
    shard = ShardOutcome()
    for item in inputs:
        stream: TextIO = io.StringIO() if spool else sys.stdout
        try:
            shard.videos.append(_segment_one(segmenter, item, settings, stream))
        except VppError as error:
            shard.failures[item.video_id] = Failure.reported(item.path, error)
        finally:
            if isinstance(stream, io.StringIO):  # lines before a failure too: stdout would have had them
                shard.jsonl[item.video_id] = stream.getvalue()
    return shard


def _segment_one(segmenter: Segmenter, item: PlannedInput, settings: VideoSettings,
                 stream: TextIO) -> VideoResult:
    from vppcli.segmenter import SegmentedFrame
    from vppcli.video import open_source

    with open_source(item.path, settings.backend, settings.image_fps) as source:  # type: ignore[arg-type]
        total = settings.selection.count(source.info.num_frames)
        with RunProgress(item.name, total, "frames", settings.quiet) as progress:
            done = 0

            def on_frame(frame: SegmentedFrame) -> None:
                nonlocal done
                done += 1
                stats = frame.instances.stats
                progress.advance(done, stats.keep_ratio if stats else None)

            return segmenter.segment(source, formats=settings.formats, output_dir=item.directory,
                                     selection=settings.selection, video_id=item.video_id, name=item.name,
                                     stream=stream, on_frame=on_frame)


def merge(outcome: RunOutcome, shards: Sequence[ShardOutcome]) -> None:
    """Add the ranks' results to `outcome` (which holds the plan's failures) in input order, and
    write their spooled jsonl lines to stdout in input order: what one process would have given."""
    videos = sorted((v for shard in shards for v in shard.videos), key=lambda v: v.video_id)
    failures = {video_id: f for shard in shards for video_id, f in shard.failures.items()}
    outcome.videos.extend(videos)
    outcome.failures.extend(failures[video_id] for video_id in sorted(failures))
    lines = {video_id: text for shard in shards for video_id, text in shard.jsonl.items()}
    for video_id in sorted(lines):
        sys.stdout.write(lines[video_id])
    sys.stdout.flush()


__all__ = ["Failure", "Naming", "Plan", "PlannedInput", "RunOutcome", "ShardOutcome", "VideoSettings", "merge",
           "plan", "read_inputs", "segment_inputs"]
