"""Output writers of `vpp segment`: one writer per format and video.

Per video directory: `overlay.mp4`, `ytvis.json`, `coco.json`, `masks/`, and the pruning
view's `pruning.mp4` and `pruning.jsonl` (`overlay.png` and `pruning.png` for an image input);
`jsonl` goes to a text stream. The files of a video appear together at `finish_and_commit()`,
atomically (see `base.py` and `atomic.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from vppcli.errors import UsageError
from vppcli.outputs.atomic import ensure_output_dir
from vppcli.outputs.base import FrameRecord, OutputWriter, VideoMeta
from vppcli.outputs.coco import CocoWriter
from vppcli.outputs.jsonl import JsonlWriter
from vppcli.outputs.overlay import OverlayWriter
from vppcli.outputs.png_masks import PngMaskWriter
from vppcli.outputs.pruning import PruningVideoWriter
from vppcli.outputs.pruning_json import PruningJsonWriter
from vppcli.outputs.ytvis import YtvisCollector, YtvisWriter

FORMATS = ("overlay", "ytvis", "coco", "png", "jsonl")
FILE_NAMES = {"overlay": "overlay.mp4", "ytvis": "ytvis.json", "coco": "coco.json", "png": "masks"}
# These need every frame's keep masks (`FrameStats.pruning`), which the model records only on request.
PRUNING_FORMATS = ("pruning", "pruning-json")
PRUNING_FILE_NAMES = {"pruning": "pruning.mp4", "pruning-json": "pruning.jsonl"}
# An image input's overlay and pruning view are images (PNG: lossless, so outlines and text stay sharp).
STILL_FILE_NAMES = {"overlay": "overlay.png", "pruning": "pruning.png"}

__all__ = [
    "FILE_NAMES",
    "FORMATS",
    "CocoWriter",
    "FrameRecord",
    "JsonlWriter",
    "OutputWriter",
    "OverlayWriter",
    "PRUNING_FILE_NAMES",
    "PRUNING_FORMATS",
    "STILL_FILE_NAMES",
    "PngMaskWriter",
    "PruningJsonWriter",
    "PruningVideoWriter",
    "VideoMeta",
    "YtvisCollector",
    "YtvisWriter",
    "file_name",
    "finish_and_commit",
    "needs_pruning_masks",
    "open_writers",
    "output_names",
    "parse_formats",
]


def parse_formats(values: list[str]) -> tuple[str, ...]:
    """Format names from repeated and/or comma-separated values, deduplicated, in given order.

    Raises:
        UsageError: an unknown name (named, with the valid ones).
    """
    names: list[str] = []
    for value in values:
        for name in (part.strip().lower() for part in value.split(",")):
            if not name:
                continue
            if name not in FORMATS + PRUNING_FORMATS:
                known = ", ".join(FORMATS + PRUNING_FORMATS)
                raise UsageError(f"unknown output format {name!r}; choose from {known}")
            if name not in names:
                names.append(name)
    return tuple(names)


def needs_pruning_masks(formats: Sequence[str]) -> bool:
    return any(name in PRUNING_FORMATS for name in formats)


def output_names() -> set[str]:
    """Every file or directory name a format can write in a video directory."""
    return {*FILE_NAMES.values(), *PRUNING_FILE_NAMES.values(), *STILL_FILE_NAMES.values()}


def file_name(name: str, still: bool) -> str:
    """The file (or directory) name of format `name`; `still`: for an image input."""
    if still and name in STILL_FILE_NAMES:
        return STILL_FILE_NAMES[name]
    return {**FILE_NAMES, **PRUNING_FILE_NAMES}[name]


def _open_writer(name: str, meta: VideoMeta, video_dir: Path, stream: TextIO) -> OutputWriter:
    if name == "jsonl":
        return JsonlWriter(meta, stream)
    path = video_dir / file_name(name, meta.still)
    if name == "pruning":
        return PruningVideoWriter(meta, path)
    if name == "pruning-json":
        return PruningJsonWriter(meta, path)
    if name == "overlay":
        return OverlayWriter(meta, path)
    if name == "ytvis":
        return YtvisWriter(meta, path)
    if name == "coco":
        return CocoWriter(meta, path)
    return PngMaskWriter(path)


def open_writers(formats: Sequence[str], meta: VideoMeta, video_dir: Path, stream: TextIO) -> list[OutputWriter]:
    """The writers of one video, in the order of `formats`.

    `video_dir` is created when a format writes files (not for `jsonl` alone). If one writer
    cannot be created, those already created are aborted.

    Raises:
        OutputError: `video_dir` cannot be created or written to, or an encoder is missing.
    """
    if any(name != "jsonl" for name in formats):
        ensure_output_dir(video_dir)
    writers: list[OutputWriter] = []
    try:
        for name in formats:
            writers.append(_open_writer(name, meta, video_dir, stream))
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return writers


def finish_and_commit(writers: Sequence[OutputWriter]) -> list[Path]:
    """Finish every writer, then commit them all; returns the files written.

    Nothing is committed unless every writer finished, so a failure leaves the old outputs (or
    none), never a mix of old and new. On any exception (Ctrl-C included) every writer is
    aborted, a no-op for those already committed, and the exception propagates.
    """
    try:
        for writer in writers:
            writer.finish()
        return [path for writer in writers for path in writer.commit()]
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
