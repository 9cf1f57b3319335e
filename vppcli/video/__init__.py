"""Frame sources: video files (decord, or OpenCV), frame directories and images."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from vppcli.errors import InputError, UsageError
from vppcli.video.images import IMAGE_SUFFIXES, ImageSequenceSource, image_files
from vppcli.video.readers import DecordSource, OpenCVSource, load_decord
from vppcli.video.source import DEFAULT_FPS, Frame, FrameSelection, FrameSource, VideoInfo

Backend = Literal["auto", "decord", "opencv"]


def open_source(path: str | Path, backend: Backend = "auto", image_fps: float | None = None) -> FrameSource:
    """Open a video file, a directory of frames or an image file as a `FrameSource`.

    backend: "auto" uses decord when it can be imported, else OpenCV (with a warning).
    image_fps: frame rate given to frame directories and images (default 30).
    """
    path = Path(path)
    if path.is_dir():
        return ImageSequenceSource(image_files(path), path.name, image_fps or DEFAULT_FPS, str(path))
    if not path.exists():
        raise InputError(f"no such file or directory: {path}")
    if not path.is_file():
        raise InputError(f"not a regular file: {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSequenceSource([path], path.stem, image_fps or DEFAULT_FPS, str(path))
    if backend == "opencv":
        return OpenCVSource(path)
    decord = load_decord()
    if decord is None:
        if backend == "decord":
            raise UsageError("--backend decord was asked for but decord cannot be imported")
        return OpenCVSource(path)
    return DecordSource(path, decord)


__all__ = [
    "DEFAULT_FPS",
    "Backend",
    "DecordSource",
    "Frame",
    "FrameSelection",
    "FrameSource",
    "ImageSequenceSource",
    "OpenCVSource",
    "VideoInfo",
    "open_source",
]
