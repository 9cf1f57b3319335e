"""Video encoders for the overlay: H.264 through an ffmpeg binary, or OpenCV's mp4v; a PNG for
an image input, whose overlay is an image too.

H.264 (libx264) plays almost everywhere; OpenCV's own mp4v (MPEG-4 part 2) needs no binary
but fewer players take it. OpenCV also silently crops odd sizes to even ones, so an odd-sized
video is only written through ffmpeg, as 4:4:4 H.264 (4:2:0 needs even sizes).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import IO, Literal

import cv2
import numpy as np

from vppcli.errors import OutputError

logger = logging.getLogger(__name__)

FFMPEG_ENV = "VPP_FFMPEG"
Codec = Literal["auto", "h264", "mp4v"]

# Constant quality 20 keeps thin outlines and small label text sharp; "veryfast" encodes 1080p
# about 2.5x faster than the default preset, so the encoder keeps up with a GPU model.
_X264_QUALITY = ["-preset", "veryfast", "-crf", "20"]
# RGB -> YUV with the matrix the stream is tagged with, so players show the colours we drew.
_BT709 = [
    "-vf", "scale=out_color_matrix=bt709:out_range=tv",
    "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
]
_STDERR_TAIL = 400
# The container stores a rational frame rate with a small denominator (30000/1001, not
# 29.97002997...). Below 1/1001 fps (a frame every ~17 minutes: a broken source header) that
# rounds to 0, which ffmpeg refuses, so that is the slowest rate written.
_RATE_DENOMINATOR = 1001
_SLOWEST_RATE = Fraction(1, _RATE_DENOMINATOR)


@functools.lru_cache(maxsize=None)
def has_libx264(executable: str) -> bool:
    """Whether `executable` runs and is an ffmpeg built with the libx264 encoder."""
    try:
        listing = subprocess.run(
            [executable, "-hide_banner", "-encoders"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return listing.returncode == 0 and " libx264 " in listing.stdout


def _bundled_ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # not installed, or no binary for this platform
        return None


def find_ffmpeg() -> str | None:
    """An ffmpeg with libx264: $VPP_FFMPEG, else `ffmpeg` on PATH, else imageio-ffmpeg's binary.

    Raises:
        OutputError: $VPP_FFMPEG is set but is not such an ffmpeg (the user asked for it).
    """
    configured = os.environ.get(FFMPEG_ENV)
    if configured:
        if not has_libx264(configured):
            raise OutputError(f"{FFMPEG_ENV}={configured} is not an ffmpeg with the libx264 encoder")
        return configured
    for candidate in (shutil.which("ffmpeg"), _bundled_ffmpeg()):
        if candidate and has_libx264(candidate):
            return candidate
    return None


class FfmpegEncoder:
    """Pipes raw RGB frames into `ffmpeg ... -c:v libx264`, started at the first frame.

    It writes `path`; messages name `shown_as`, the name the user knows (`path` is a temporary).
    """

    def __init__(self, executable: str, path: Path, shown_as: Path, width: int, height: int, fps: float) -> None:
        even = width % 2 == 0 and height % 2 == 0
        self._pix_fmt = "yuv420p" if even else "yuv444p"
        self.description = f"libx264 {self._pix_fmt} (ffmpeg at {executable})"
        if fps < _SLOWEST_RATE:
            logger.warning("%s: %g fps is too slow for the container; writing 1/%d fps",
                           shown_as, fps, _RATE_DENOMINATOR)
        rate = max(Fraction(fps).limit_denominator(_RATE_DENOMINATOR), _SLOWEST_RATE)
        self._command = [
            executable, "-hide_banner", "-nostats", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0",
            "-an", *_BT709, "-c:v", "libx264", *_X264_QUALITY, "-pix_fmt", self._pix_fmt,
            "-movflags", "+faststart", "-f", "mp4", str(path),
        ]
        self._shown_as = shown_as
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def write(self, rgb: np.ndarray) -> None:
        if self._process is None:
            self._start()
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(np.ascontiguousarray(rgb).data)
        except OSError as error:  # BrokenPipeError included: ffmpeg exited
            self._close_stdin()
            self._process.wait()
            reason = self._stderr_tail() or error
            raise OutputError(f"ffmpeg stopped while writing {self._shown_as}: {reason}") from error

    def finish(self) -> None:
        if self._process is None:
            return
        self._close_stdin()  # end of input: ffmpeg writes the rest and exits
        if self._process.wait() != 0:
            raise OutputError(f"ffmpeg could not write {self._shown_as}: {self._stderr_tail()}")
        self._close_stderr()

    def kill(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
            self._close_stdin()
        self._close_stderr()

    def _close_stdin(self) -> None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.close()
        except OSError:
            pass  # ffmpeg already exited (its return code and stderr say why); the pipe is closed anyway

    def _start(self) -> None:
        # stderr goes to a file: a pipe nobody reads could fill up and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        logger.debug("starting %s", " ".join(self._command))
        try:
            self._process = subprocess.Popen(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as error:
            self._close_stderr()
            raise OutputError(f"cannot run ffmpeg ({self._command[0]}): {error.strerror or error}") from error

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return " ".join(text[-_STDERR_TAIL:].split())

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


class OpenCvEncoder:
    """OpenCV's VideoWriter with the mp4v codec (its FFmpeg backend picks the container from the
    file extension, so `path` must end in .mp4)."""

    description = "mp4v (OpenCV)"

    def __init__(self, path: Path, shown_as: Path, width: int, height: int, fps: float) -> None:
        if width % 2 or height % 2:
            raise OutputError(
                f"the overlay of a {width}x{height} video needs ffmpeg with libx264 (OpenCV crops "
                f"odd sizes): install imageio-ffmpeg or set {FFMPEG_ENV}"
            )
        self._path = path
        self._shown_as = shown_as
        self._size = (width, height)
        self._fps = fps
        self._writer: cv2.VideoWriter | None = None

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self._path), cv2.VideoWriter_fourcc(*"mp4v"), self._fps, self._size)
            if not self._writer.isOpened():
                raise OutputError(f"OpenCV cannot write {self._shown_as} with mp4v")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def finish(self) -> None:
        self.kill()

    def kill(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class PngEncoder:
    """The single frame of an image input as a lossless PNG (sharp outlines and label text)."""

    description = "PNG (OpenCV)"

    def __init__(self, path: Path, shown_as: Path) -> None:
        self._path = path
        self._shown_as = shown_as
        self._written = False

    def write(self, rgb: np.ndarray) -> None:
        if self._written:
            raise ValueError(f"{self._shown_as} is an image: one frame only")
        ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OutputError(f"OpenCV cannot encode {self._shown_as}")
        try:
            self._path.write_bytes(data.tobytes())
        except OSError as error:
            raise OutputError(f"cannot write {self._shown_as}: {error.strerror or error}") from error
        self._written = True

    def finish(self) -> None:
        pass  # written whole at the first frame

    def kill(self) -> None:
        pass  # nothing runs; the caller discards the temporary


Encoder = FfmpegEncoder | OpenCvEncoder | PngEncoder


def make_encoder(codec: Codec, path: Path, shown_as: Path, width: int, height: int, fps: float) -> Encoder:
    """The encoder for `codec`: "auto" is H.264 when an ffmpeg with libx264 is found, else mp4v;
    a PNG whatever `codec` when `shown_as` ends in .png (an image input).

    It writes `path` (a temporary); messages name `shown_as` (the final name).

    Raises:
        OutputError: "h264" without a usable ffmpeg, an odd size that only ffmpeg can keep, or
            a frame rate that is not a positive number.
    """
    if shown_as.suffix == ".png":
        return PngEncoder(path, shown_as)
    if not (math.isfinite(fps) and fps > 0):
        raise OutputError(f"cannot write {shown_as} at {fps} fps: the frame rate must be positive and finite")
    executable = None if codec == "mp4v" else find_ffmpeg()
    if executable is not None:
        return FfmpegEncoder(executable, path, shown_as, width, height, fps)
    if codec == "h264":
        raise OutputError(f"no ffmpeg with libx264 found: install imageio-ffmpeg or set {FFMPEG_ENV}")
    if codec == "auto":
        logger.warning("no ffmpeg with libx264 found; writing the overlay with OpenCV's mp4v")
    return OpenCvEncoder(path, shown_as, width, height, fps)
