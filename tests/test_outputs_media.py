"""Overlay video, PNG id masks and the palette they share."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from outputs_synthetic import (
    BACKGROUND,
    CLASS_NAMES,
    HEIGHT,
    NUM_FRAMES,
    PLAN,
    SOURCE_FPS,
    STRIDE,
    WIDTH,
    expected_id_map,
    make_meta,
    make_records,
)
from vppcli.errors import OutputError
from vppcli.outputs import OverlayWriter, PngMaskWriter, finish_and_commit
from vppcli.outputs.colors import palette, track_color
from vppcli.outputs.encoders import FFMPEG_ENV, Codec, find_ffmpeg
from vppcli.outputs.overlay import MASK_ALPHA, label_layout, label_text
from vppcli.outputs.png_masks import read_png

decord = pytest.importorskip("decord")
needs_ffmpeg = pytest.mark.skipif(find_ffmpeg() is None, reason="no ffmpeg with libx264")


# Labels are a dozen pixels high at any size: at 3x the squares leave room to see the tint.
SCALE = 3


def write_overlay(tmp_path: Path, height: int, width: int, codec: Codec) -> tuple[OverlayWriter, np.ndarray]:
    path = tmp_path / "overlay.mp4"
    writer = OverlayWriter(make_meta(height, width), path, codec=codec)
    for record in make_records(height, width, SCALE):
        writer.write_frame(record)
    assert finish_and_commit([writer]) == [path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.mp4"]
    reader = decord.VideoReader(str(path))
    assert reader.get_avg_fps() == pytest.approx(SOURCE_FPS / STRIDE, rel=1e-3)
    return writer, reader.get_batch(list(range(len(reader)))).asnumpy()


def scaled_box(top: int, left: int, side: int) -> list[float]:
    return [SCALE * left, SCALE * top, SCALE * (left + side), SCALE * (top + side)]


def label_rectangles(position: int, height: int, width: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(track id, label rectangle) per instance of the frame, in drawing order (by score)."""
    rows = sorted(PLAN[position], key=lambda row: row[2])
    return [
        (track_id, label_layout(label_text(track_id, CLASS_NAMES[label], score), box, height, width))
        for track_id, label, score, *square in rows
        for box in [scaled_box(*square)]
    ]


def assert_tracks_coloured(frames: np.ndarray, height: int, width: int) -> None:
    """Inside each mask (away from outlines, labels and chroma bleeding) the pixel is the
    background blended with the track's colour; the top label has the track's colour; the
    untouched background stays grey."""
    assert frames.shape == (NUM_FRAMES, height, width, 3)
    for position, frame in enumerate(frames):
        ids = expected_id_map(position, height, width, SCALE)
        interior = cv2.erode((ids > 0).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        labels = label_rectangles(position, height, width)
        for _, (left, top, right, bottom) in labels:
            interior[max(0, top - 3) : bottom + 4, max(0, left - 3) : right + 4] = False
        checked = np.unique(ids[interior])
        assert len(checked) > 0 or not PLAN[position]
        for track_id in checked:
            expected = (1 - MASK_ALPHA) * BACKGROUND + MASK_ALPHA * np.array(track_color(int(track_id)))
            pixels = frame[interior & (ids == track_id)].astype(float)
            np.testing.assert_allclose(pixels.mean(0), expected, atol=12)
        if labels:
            track_id, (left, top, right, bottom) = labels[-1]
            label_pixels = frame[top : bottom + 1, left : right + 1].reshape(-1, 3)
            np.testing.assert_allclose(np.median(label_pixels, axis=0), track_color(track_id), atol=40)
        far = cv2.dilate((ids > 0).astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
        for _, (left, top, right, bottom) in labels:
            far[max(0, top - 8) : bottom + 9, max(0, left - 8) : right + 9] = False
        if far.any():
            np.testing.assert_allclose(frame[far].astype(float).mean(0), [BACKGROUND] * 3, atol=6)
    # the empty frame is left plain (up to coding artefacts: mp4v leaves faint ghosts)
    assert (np.abs(frames[4].astype(int) - BACKGROUND).max(-1) > 20).mean() < 0.01


@needs_ffmpeg
@pytest.mark.parametrize("size", [(SCALE * HEIGHT, SCALE * WIDTH), (SCALE * HEIGHT - 1, SCALE * WIDTH - 1)])
def test_h264_overlay_decodes_at_original_size_with_track_colours(tmp_path: Path, size: tuple[int, int]) -> None:
    writer, frames = write_overlay(tmp_path, *size, codec="h264")
    assert writer.encoder.startswith("libx264 yuv420p" if size[0] % 2 == 0 else "libx264 yuv444p")
    assert_tracks_coloured(frames, *size)


def test_mp4v_overlay_decodes_with_track_colours(tmp_path: Path) -> None:
    writer, frames = write_overlay(tmp_path, SCALE * HEIGHT, SCALE * WIDTH, codec="mp4v")
    assert writer.encoder == "mp4v (OpenCV)"
    assert_tracks_coloured(frames, SCALE * HEIGHT, SCALE * WIDTH)


def test_mp4v_refuses_odd_sizes_it_would_crop(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="63x47"):
        OverlayWriter(make_meta(47, 63), tmp_path / "overlay.mp4", codec="mp4v")


@pytest.mark.parametrize("fps", [0.0, -5.0, float("nan"), float("inf")])
def test_an_unusable_frame_rate_is_an_output_error(tmp_path: Path, fps: float) -> None:
    meta = dataclasses.replace(make_meta(), fps=fps)
    with pytest.raises(OutputError, match=f"cannot write {re.escape(str(tmp_path / 'overlay.mp4'))} at .* fps"):
        OverlayWriter(meta, tmp_path / "overlay.mp4")
    assert list(tmp_path.iterdir()) == []


@needs_ffmpeg
def test_h264_overlay_of_a_very_slow_video_is_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 1e-4 fps is 0/1 at a denominator of 1001, which ffmpeg refuses
    path = tmp_path / "overlay.mp4"
    writer = OverlayWriter(dataclasses.replace(make_meta(), fps=1e-4), path, codec="h264")
    for record in make_records()[:2]:
        writer.write_frame(record)
    assert finish_and_commit([writer]) == [path]
    assert "too slow" in caplog.text
    assert len(decord.VideoReader(str(path))) == 2


def test_bad_vpp_ffmpeg_is_an_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FFMPEG_ENV, str(tmp_path / "no-such-ffmpeg"))
    with pytest.raises(OutputError, match=FFMPEG_ENV):
        OverlayWriter(make_meta(), tmp_path / "overlay.mp4")
    assert list(tmp_path.iterdir()) == []


def test_palette_is_fixed_and_distinct() -> None:
    # pinned: a changed palette would recolour tracks relative to earlier runs' outputs
    assert [track_color(i) for i in (0, 1, 2, 3, 300)] == [
        (0, 0, 0), (82, 117, 204), (148, 230, 34), (255, 102, 236), (38, 255, 138)
    ]
    colours = [track_color(i) for i in range(1, 65)]
    assert len(set(colours)) == len(colours)
    gaps = [max(abs(a - b) for a, b in zip(c1, c2)) for c1, c2 in zip(colours, colours[1:])]
    assert min(gaps) > 40  # neighbouring ids are easy to tell apart
    np.testing.assert_array_equal(palette(4), [(0, 0, 0), track_color(1), track_color(2), track_color(3)])
    assert palette().shape == (256, 3)


def write_masks(tmp_path: Path) -> Path:
    directory = tmp_path / "masks"
    writer = PngMaskWriter(directory)
    for record in make_records():
        writer.write_frame(record)
    assert finish_and_commit([writer]) == [directory]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]
    names = [f"{STRIDE * position:06d}.png" for position in range(NUM_FRAMES)]
    assert sorted(p.name for p in directory.iterdir()) == names
    return directory


def test_png_masks_hold_track_ids_with_the_overlay_palette(tmp_path: Path) -> None:
    directory = write_masks(tmp_path)
    for position in range(NUM_FRAMES):
        path = directory / f"{STRIDE * position:06d}.png"
        ids, colours = read_png(path)
        assert ids.dtype == np.uint8
        # overlaps included: the higher-scored track owns the pixel
        np.testing.assert_array_equal(ids, expected_id_map(position))
        assert colours is not None
        for track_id in (1, 2, 3):
            assert tuple(colours[track_id]) == track_color(track_id)
        # an independent decoder (OpenCV expands the palette) sees the same picture
        np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], colours[ids])


def test_png_masks_switch_the_whole_video_to_16_bit_for_ids_above_255(tmp_path: Path) -> None:
    # ids 1 and 2 stay below 256 (frames 0-2 are written as 8-bit first); track 3 becomes id 300
    records = make_records()
    directory = tmp_path / "masks"
    writer = PngMaskWriter(directory)
    for position, record in enumerate(records):
        if position >= 3:
            record.instances.track_ids[record.instances.track_ids == 3] = 300
        writer.write_frame(record)
    finish_and_commit([writer])
    for position in range(NUM_FRAMES):
        path = directory / f"{STRIDE * position:06d}.png"
        ids, colours = read_png(path)
        assert ids.dtype == np.uint16 and colours is None
        expected = expected_id_map(position)
        expected[expected == 3] = 300
        np.testing.assert_array_equal(ids, expected)
        np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), expected)


def test_png_masks_refuse_ids_beyond_16_bits_and_leave_nothing(tmp_path: Path) -> None:
    records = make_records()
    records[2].instances.track_ids[0] = 70_000
    writer = PngMaskWriter(tmp_path / "masks")
    writer.write_frame(records[0])
    writer.write_frame(records[1])
    with pytest.raises(OutputError, match="track id 70000 at frame .* does not fit a 16-bit PNG"):
        writer.write_frame(records[2])
    writer.abort()
    assert list(tmp_path.iterdir()) == []
