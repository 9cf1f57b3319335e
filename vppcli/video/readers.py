"""Video file readers: decord by default, OpenCV when decord cannot be imported.

decord gives exact frame counts and timestamps but has no wheels for some platforms (e.g. Apple
Silicon) and is unmaintained, so both readers sit behind `FrameSource` and are tested alike.
Native decoders write their complaints straight to the process's stderr; we keep those out of
the user's terminal and report one line of our own instead.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from vppcli.errors import InputError
from vppcli.video.source import DEFAULT_FPS, Frame, FrameSelection, FrameSource, VideoInfo

logger = logging.getLogger(__name__)


@functools.cache
def load_decord() -> ModuleType | None:
    """decord, or None (warned about once per process) when it cannot be imported."""
    try:
        decord = importlib.import_module("decord")
    except ImportError as error:
        logger.warning("decord is not available (%s); reading videos with OpenCV, whose frame "
                       "counts can be wrong for some files", error)
        return None
    decord.logging.set_level(decord.logging.QUIET)
    return decord


def usable_fps(fps: float, path: Path) -> float:
    """The container's frame rate, or the default when it states none (0, NaN, negative, absurd)."""
    if math.isfinite(fps) and 0.01 <= fps <= 10_000:
        return fps
    logger.warning("%s states a frame rate of %s; assuming %g", path, fps, DEFAULT_FPS)
    return DEFAULT_FPS


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Swallow what C/C++ code writes to file descriptor 2 inside the block."""
    sink = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    try:
        os.dup2(sink, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


class DecordSource(FrameSource):
    def __init__(self, path: Path, decord: ModuleType) -> None:
        self._decord = decord
        try:
            with native_stderr_silenced():
                self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
                num_frames = len(self._reader)
                first = self._reader[0].asnumpy() if num_frames else None
                fps = usable_fps(float(self._reader.get_avg_fps()), path)
        except (RuntimeError, decord.DECORDError) as error:
            logger.debug("decord could not open %s: %s", path, error)
            raise InputError(f"cannot read video {path}: not a video, no frames, truncated, or an unsupported codec") from None
        if first is None:
            raise InputError(f"video has no frames: {path}")
        height, width = first.shape[:2]
        self.info = VideoInfo(path.stem, str(path), num_frames, fps, height, width, "decord")

    def frames(self, selection: FrameSelection = FrameSelection()) -> Iterator[Frame]:
        decord = self._decord
        indices = selection.indices(self.info.num_frames)
        for position, index in enumerate(indices):
            try:
                with native_stderr_silenced():
                    if position == 0:
                        self._reader.seek_accurate(index)
                    elif selection.stride > 1:
                        self._reader.skip_frames(selection.stride - 1)
                    image = self._reader.next().asnumpy()
                    start, _ = self._reader.get_frame_timestamp(index)
            except (RuntimeError, StopIteration, decord.DECORDError) as error:
                logger.debug("decord failed at frame %d of %s: %r", index, self.info.path, error)
                raise InputError(
                    f"decode error at frame {index} of {self.info.path} (truncated or corrupt video)"
                ) from None
            yield Frame(index, float(start), np.ascontiguousarray(image))

    def close(self) -> None:
        self._reader = None


class OpenCVSource(FrameSource):
    """Reads through cv2.VideoCapture. Its frame count is the container's claim, which can be
    wrong: a stream that ends early is logged, not treated as an error."""

    def __init__(self, path: Path) -> None:
        self._path = path
        capture = self._open()
        try:
            num_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = usable_fps(float(capture.get(cv2.CAP_PROP_FPS)), path)
            with native_stderr_silenced():
                ok, first = capture.read()
        finally:
            capture.release()
        if not ok or num_frames <= 0:
            raise InputError(f"video has no frames: {path}")
        height, width = first.shape[:2]
        self.info = VideoInfo(path.stem, str(path), num_frames, fps, height, width, "opencv")

    def _open(self) -> cv2.VideoCapture:
        # ffmpeg inside OpenCV logs every damaged macroblock; the user gets our line instead.
        with native_stderr_silenced():
            capture = cv2.VideoCapture(str(self._path))
        if not capture.isOpened():
            raise InputError(f"cannot read video {self._path}: not a video, no frames, truncated, or an unsupported codec")
        return capture

    def frames(self, selection: FrameSelection = FrameSelection()) -> Iterator[Frame]:
        # A fresh capture per pass: CAP_PROP_POS_FRAMES seeking is inexact for many codecs.
        capture = self._open()
        try:
            yield from self._read(capture, selection)
        finally:
            capture.release()

    def _read(self, capture: cv2.VideoCapture, selection: FrameSelection) -> Iterator[Frame]:
        position = 0
        for index in selection.indices(self.info.num_frames):
            with native_stderr_silenced():
                while position < index and capture.grab():  # grab() skips without converting
                    position += 1
                ok, image = capture.read() if position == index else (False, None)
            if not ok:
                self._ended_early(position)
                return
            position += 1
            yield Frame(index, index / self.info.fps, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))

    def _ended_early(self, position: int) -> None:
        logger.warning("%s: the container claims %d frames but the stream ended after %d",
                       self.info.path, self.info.num_frames, position)

