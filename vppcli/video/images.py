"""Frames stored as image files: a YouTube-VIS `JPEGImages/<video>/` directory, or one image."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from vppcli.errors import InputError
from vppcli.video.source import DEFAULT_FPS, Frame, FrameSelection, FrameSource, VideoInfo

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def natural_key(path: Path) -> list[int | str]:
    """Sort key that puts frame_9 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def image_files(directory: Path) -> list[Path]:
    """The image files of a frame directory, in natural order. Hidden files (e.g. the `._*`
    companions macOS leaves on copied folders) are not frames."""
    files = [p for p in directory.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=natural_key)


def read_image(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB; InputError naming the file if it cannot be read."""
    if not path.is_file():
        raise InputError(f"missing frame: {path}")
    # imdecode on bytes rather than imread: imread silently returns None for any failure.
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"cannot decode image: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageSequenceSource(FrameSource):
    """The given image files, in the given order, as one video (frame i = files[i]).

    The first file is decoded up front for the frame size; all frames must have that size.
    """

    def __init__(self, files: Sequence[Path], name: str, fps: float = DEFAULT_FPS,
                 path: str | None = None) -> None:
        if not files:
            raise InputError(f"no image frames in {path or name}")
        if fps <= 0:
            raise InputError(f"frame rate must be positive, got {fps}")
        self.files = [Path(f) for f in files]
        # The outputs name a frame after its file, as the YouTube-VIS layout does: "<video>/<file>".
        single_image = path is not None and Path(path).is_file()
        self.file_names = [f.name if single_image else f"{f.parent.name}/{f.name}" for f in self.files]
        height, width = read_image(self.files[0]).shape[:2]
        self.info = VideoInfo(name, path or str(self.files[0].parent), len(self.files), fps,
                              height, width, "image" if single_image else "images")

    def frames(self, selection: FrameSelection = FrameSelection()) -> Iterator[Frame]:
        size = (self.info.height, self.info.width)
        for index in selection.indices(len(self.files)):
            image = read_image(self.files[index])
            if image.shape[:2] != size:
                raise InputError(
                    f"{self.files[index]} is {image.shape[1]}x{image.shape[0]}, "
                    f"the first frame is {size[1]}x{size[0]}"
                )
            yield Frame(index, index / self.info.fps, image, self.file_names[index])
