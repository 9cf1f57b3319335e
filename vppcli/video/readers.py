"""Video file readers: decord by default, OpenCV when decord cannot be imported.

decord gives exact frame counts and timestamps but has no wheels for some platforms (e.g. Apple
Silicon) and is unmaintained, so both readers sit behind `FrameSource` and are tested alike.
Native decoders write their complaints straight to the process's stderr; we keep those out of
the user's terminal and report one line of our own instead.

A frame that cannot be decoded in the middle of a stream (truncation, damaged data) ends the
video there, with a warning naming that frame, for both readers alike: what came before is the
result. decord decodes ahead on a thread, so its error surfaces frames before the damaged one;
on an error it hands the rest of the video to OpenCV, which stops at the damaged frame itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
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


AV_LOG_QUIET = -8


def quiet_libav() -> None:
    """Set the log level of every libavutil in the process (decord's and OpenCV's bundle their
    own) to quiet. The silenced blocks alone leave a gap: a decoder thread decoding ahead can
    complain between two of them. Linux only (reads /proc/self/maps); elsewhere the blocks remain."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    libraries = {line.split()[-1] for line in maps.splitlines() if "/libavutil" in line}
    for library in sorted(libraries):
        try:
            ctypes.CDLL(library).av_log_set_level(AV_LOG_QUIET)
        except (OSError, AttributeError) as error:
            logger.debug("cannot quieten %s: %s", library, error)


def open_capture(path: Path) -> cv2.VideoCapture:
    # ffmpeg inside OpenCV logs every damaged macroblock; the user gets our line instead.
    with native_stderr_silenced():
        capture = cv2.VideoCapture(str(path))
        quiet_libav()  # after the open: OpenCV sets ffmpeg's level when it first opens a file
    if not capture.isOpened():
        raise InputError(f"cannot read video {path}: not a video, no frames, truncated, or an unsupported codec")
    return capture


def opencv_frames(path: Path, indices: Sequence[int], fps: float) -> Iterator[Frame]:
    """The frames `indices` (increasing) of `path` through OpenCV, until one cannot be decoded."""
    # A fresh capture per pass: CAP_PROP_POS_FRAMES seeking is inexact for many codecs.
    capture = open_capture(path)
    try:
        position = 0
        for index in indices:
            with native_stderr_silenced():
                while position < index and capture.grab():  # grab() skips without converting
                    position += 1
                ok, image = capture.read() if position == index else (False, None)
            if not ok:
                return
            position += 1
            yield Frame(index, index / fps, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    finally:
        with native_stderr_silenced():  # closing flushes the decoder, which can complain again
            capture.release()


class DecordSource(FrameSource):
    def __init__(self, path: Path, decord: ModuleType) -> None:
        self._decord = decord
        try:
            with native_stderr_silenced():
                self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
                quiet_libav()
                num_frames = len(self._reader)
                fps = usable_fps(float(self._reader.get_avg_fps()), path)
        except (RuntimeError, decord.DECORDError) as error:
            logger.debug("decord could not open %s: %s", path, error)
            raise InputError(f"cannot read video {path}: not a video, no frames, truncated, or an unsupported codec") from None
        if num_frames == 0:
            raise InputError(f"video has no frames: {path}")
        height, width = self._first_frame(path, fps).shape[:2]
        self.info = VideoInfo(path.stem, str(path), num_frames, fps, height, width, "decord")

    def _first_frame(self, path: Path, fps: float) -> np.ndarray:
        """Frame 0 for the frame size; through OpenCV when decord's read-ahead fails on damage
        further on (the video may still have good frames to give)."""
        try:
            with native_stderr_silenced():
                return self._reader[0].asnumpy()
        except (RuntimeError, self._decord.DECORDError) as error:
            logger.debug("decord cannot decode frame 0 of %s (%r); asking OpenCV", path, error)
        with contextlib.closing(opencv_frames(path, [0], fps)) as frames:  # releases the capture now
            first = next(frames, None)
        if first is None:
            raise InputError(f"decode error at frame 0 of {path} (truncated or corrupt video)")
        return first.image

    def frames(self, selection: FrameSelection = FrameSelection()) -> Iterator[Frame]:
        decord = self._decord
        indices = selection.indices(self.info.num_frames)
        self.ended_at = None
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
                # Not necessarily the damaged frame: the thread decoding ahead may have hit it.
                logger.debug("decord failed at frame %d of %s (%r); OpenCV reads on", index, self.info.path, error)
                yield from self.checked(opencv_frames(Path(self.info.path), indices[position:], self.info.fps),
                                        indices[position:], len(indices))
                return
            yield Frame(index, float(start), np.ascontiguousarray(image))

    def close(self) -> None:
        self._reader = None


class OpenCVSource(FrameSource):
    """Reads through cv2.VideoCapture. Its frame count is the container's claim, which can be
    wrong: a stream that ends early is logged, not treated as an error."""

    def __init__(self, path: Path) -> None:
        self._path = path
        capture = open_capture(path)
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

    def frames(self, selection: FrameSelection = FrameSelection()) -> Iterator[Frame]:
        indices = selection.indices(self.info.num_frames)
        self.ended_at = None
        yield from self.checked(opencv_frames(self._path, indices, self.info.fps), indices, len(indices))

