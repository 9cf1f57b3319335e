"""Frame sources: decord and OpenCV readers behave alike; directories, images, selections, bad input."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from tests.video_files import (
    bright_columns,
    damaged_faststart_copy,
    noisy_striped_clip,
    striped_clip,
    write_frames,
    write_video,
)
from vppcli.errors import InputError, UsageError
from vppcli.video import DecordSource, FrameSelection, ImageSequenceSource, OpenCVSource, open_source
from vppcli.video.readers import load_decord

BACKENDS = ["decord", "opencv"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", striped_clip(30), fps=25.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_readers_give_every_frame_with_count_fps_and_timing(clip: Path, backend: str) -> None:
    with open_source(clip, backend) as source:  # type: ignore[arg-type]
        assert isinstance(source, DecordSource if backend == "decord" else OpenCVSource)
        info = source.info
        assert (info.num_frames, info.fps, info.height, info.width, info.name) == (30, 25.0, 48, 64, "clip")
        frames = list(source.frames())
    assert [f.index for f in frames] == list(range(30))
    assert [bright_columns(f.image) for f in frames] == [4 + t for t in range(30)]
    assert frames[10].timestamp == pytest.approx(0.4)
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (48, 64, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_selection_keeps_source_indices_and_timestamps(clip: Path, backend: str) -> None:
    with open_source(clip, backend) as source:  # type: ignore[arg-type]
        selection = FrameSelection(start=3, max_frames=4, stride=5)
        frames = list(source.frames(selection))
        again = list(source.frames(selection))  # each pass starts over
    assert [f.index for f in frames] == [3, 8, 13, 18] == [f.index for f in again]
    assert [bright_columns(f.image) for f in frames] == [7, 12, 17, 22]
    assert [f.timestamp for f in frames] == pytest.approx([0.12, 0.32, 0.52, 0.72])


def test_selection_arithmetic_and_validation() -> None:
    assert list(FrameSelection(start=28, stride=2).indices(30)) == [28]
    assert FrameSelection(start=40).count(30) == 0
    assert FrameSelection(max_frames=3, stride=10).count(25) == 3
    for bad in ({"start": -1}, {"stride": 0}, {"max_frames": 0}):
        with pytest.raises(UsageError):
            FrameSelection(**bad)  # type: ignore[arg-type]


def test_without_decord_the_opencv_reader_takes_over_with_one_warning(
    clip: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    load_decord.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            first, second = open_source(clip), open_source(clip)
        assert isinstance(first, OpenCVSource) and isinstance(second, OpenCVSource)
        assert len([r for r in caplog.records if "decord is not available" in r.message]) == 1
        with pytest.raises(UsageError, match="decord cannot be imported"):
            open_source(clip, "decord")
    finally:
        load_decord.cache_clear()


def test_frame_directory_in_natural_order_with_chosen_fps(tmp_path: Path) -> None:
    frames = striped_clip(12)
    write_frames(tmp_path / "video", frames)
    (tmp_path / "video" / "notes.txt").write_text("not a frame")
    with open_source(tmp_path / "video", image_fps=6.0) as source:
        assert source.info.num_frames == 12 and source.info.backend == "images"
        read = list(source.frames(FrameSelection(start=1, stride=4)))
    assert [f.index for f in read] == [1, 5, 9]
    assert [bright_columns(f.image) for f in read] == [5, 9, 13]  # 00005 < 00025 < 00045
    assert read[1].timestamp == pytest.approx(5 / 6)


def test_single_image_is_a_one_frame_video(tmp_path: Path) -> None:
    (path,) = write_frames(tmp_path, striped_clip(1), suffix=".png")
    with open_source(path) as source:
        (frame,) = list(source.frames())
    assert source.info.num_frames == 1 and bright_columns(frame.image) == 4


def truncated_copy(source: Path, target: Path, faststart: bool, keep: float = 0.5) -> Path:
    if faststart:  # index at the front: the container opens, the data stops half-way
        moved = target.with_name("faststart.mp4")
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(source),
                        "-c", "copy", "-movflags", "+faststart", str(moved)], check=True)
        source = moved
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["missing", "text", "truncated", "truncated_faststart", "empty_dir", "zero_frames"])
def test_bad_inputs_raise_one_line_input_errors(tmp_path: Path, clip: Path, backend: str, case: str,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "input.mp4"
    if case == "text":
        path.write_text("this is not a video\n")
    elif case.startswith("truncated"):
        truncated_copy(clip, path, faststart=case.endswith("faststart"))
    elif case == "empty_dir":
        path = tmp_path / "frames"
        path.mkdir()
    elif case == "zero_frames":  # a valid container whose video stream has no frame
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        "color=c=black:s=64x48:d=1", "-frames:v", "0", "-c:v", "mpeg4", str(path)], check=True)
    with pytest.raises(InputError) as raised:
        with open_source(path, backend) as source:  # type: ignore[arg-type]
            list(source.frames())
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    assert capfd.readouterr().err == ""  # native decoder chatter never reaches the terminal


def test_opencv_reader_stops_at_the_real_end_of_a_truncated_stream(
    tmp_path: Path, clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = truncated_copy(clip, tmp_path / "cut.mp4", faststart=True, keep=0.8)
    with caplog.at_level(logging.WARNING), OpenCVSource(path) as source:
        frames = list(source.frames())
    assert 0 < len(frames) < 30 and source.ended_at == len(frames)
    assert f"cannot decode frame {len(frames)}" in caplog.text


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("damaged")
    return damaged_faststart_copy(write_video(directory / "noisy.mp4", noisy_striped_clip(40), fps=25.0),
                                  directory / "damaged.mp4")


@pytest.mark.parametrize("backend", BACKENDS)
def test_damage_mid_stream_ends_the_video_at_the_same_real_frame_with_both_readers(
    damaged: Path, backend: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with open_source(damaged, "opencv") as reference:
        expected = [bright_columns(frame.image) for frame in reference.frames()]
    assert 1 < len(expected) < 40  # the damage is part-way through
    with caplog.at_level(logging.WARNING), open_source(damaged, backend) as source:  # type: ignore[arg-type]
        frames = list(source.frames())
    # decord's read-ahead fails frames earlier; the frames up to the real damage still come
    assert [frame.index for frame in frames] == list(range(len(expected)))
    # The frame just before the damage can come back with the decoder's concealment in it (about
    # one run in ten with decord, a race of its decoding thread): the content is compared before it.
    assert [bright_columns(frame.image) for frame in frames][:-1] == expected[:-1]
    assert source.ended_at == len(expected)
    assert f"cannot decode frame {len(expected)} (truncated or corrupt video); the video ends there, after " \
           f"{len(expected)} of 40 selected frames" in caplog.text
    # No native decoder complaints, not even at close or from a decoder thread between reads.
    chatter = capfd.readouterr().err
    assert not re.search(r"\[[\w-]+ @ 0x[0-9a-f]+\] \S", chatter), chatter


def test_a_decord_error_hands_the_rest_of_the_video_to_opencv(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decord = load_decord()
    assert decord is not None
    source = DecordSource(clip, decord)
    real_next = source._reader.next
    calls = iter(range(100))

    def failing_next() -> object:
        if next(calls) == 4:
            raise decord.DECORDError("corrupt packet")
        return real_next()

    monkeypatch.setattr(source._reader, "next", failing_next)
    frames = list(source.frames(FrameSelection(start=2, stride=3)))
    assert [frame.index for frame in frames] == list(range(2, 30, 3)) and source.ended_at is None
    assert [bright_columns(frame.image) for frame in frames] == [4 + index for index in range(2, 30, 3)]


def test_image_sequence_errors_name_the_file(tmp_path: Path) -> None:
    files = write_frames(tmp_path, striped_clip(3))
    files[1].unlink()
    source = ImageSequenceSource(files, "video")
    with pytest.raises(InputError, match=r"missing frame: .*00005\.jpg"):
        list(source.frames())
    write_frames(tmp_path / "other", [np.zeros((10, 10, 3), np.uint8)])
    odd = ImageSequenceSource([files[0], tmp_path / "other" / "00000.jpg"], "video")
    with pytest.raises(InputError, match="the first frame is 64x48"):
        list(odd.frames())
    with pytest.raises(InputError, match="no image frames"):
        ImageSequenceSource([], "video")


def test_hidden_files_are_not_frames_and_absurd_frame_rates_fall_back(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    from vppcli.video.readers import usable_fps

    write_frames(tmp_path / "video", striped_clip(3))
    (tmp_path / "video" / "._00000.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    with open_source(tmp_path / "video") as source:
        assert source.info.num_frames == 3 and len(list(source.frames())) == 3
    with caplog.at_level(logging.WARNING):
        assert [usable_fps(v, tmp_path) for v in (25.0, 0.0, float("nan"), -3.0, 1e9)] == [25.0] + [30.0] * 4
    assert caplog.text.count("assuming 30") == 4
