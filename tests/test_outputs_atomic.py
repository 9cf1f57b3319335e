"""Writers together: file layout, two-phase atomic commit, abort, failures and unwritable directories."""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import re
import stat
import warnings
from pathlib import Path

import pytest

from outputs_synthetic import NUM_FRAMES, STRIDE, make_meta, make_records
from tests.helpers import moving_clip
from tests.video_files import write_frames
from vppcli.errors import OutputError
from vppcli.model.rovis import VppModel
from vppcli.outputs import (
    FILE_NAMES,
    FORMATS,
    OverlayWriter,
    PngMaskWriter,
    YtvisWriter,
    finish_and_commit,
    open_writers,
)
from vppcli.outputs.atomic import AtomicDirectory, AtomicFile, remove_quietly
from vppcli.outputs.base import FrameRecord
from vppcli.outputs.encoders import FFMPEG_ENV
from vppcli.segmenter import Segmenter
from vppcli.video.images import ImageSequenceSource

FINAL_NAMES = sorted(FILE_NAMES.values())


def snapshot(path: Path) -> dict[str, bytes]:
    """Relative name -> content of a file, or of every file under a directory."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*"))}


def run(video_dir: Path, frames: int = NUM_FRAMES) -> tuple[list[Path], io.StringIO]:
    stream = io.StringIO()
    writers = open_writers(FORMATS, make_meta(), video_dir, stream)
    for record in make_records()[:frames]:
        for writer in writers:
            writer.write_frame(record)
    return finish_and_commit(writers), stream


def test_open_writers_lays_out_one_directory_per_video(tmp_path: Path) -> None:
    video_dir = tmp_path / "out" / "clip"
    written, stream = run(video_dir)
    assert sorted(path.name for path in written) == FINAL_NAMES
    assert sorted(os.listdir(video_dir)) == FINAL_NAMES  # no temporaries left
    assert len(stream.getvalue().splitlines()) == NUM_FRAMES


def test_jsonl_alone_creates_no_directory(tmp_path: Path) -> None:
    writers = open_writers(("jsonl",), make_meta(), tmp_path / "clip", io.StringIO())
    assert finish_and_commit(writers) == []
    assert not (tmp_path / "clip").exists()


def assert_abort_leaves_nothing(writers: list, directory: Path) -> None:
    """Mid-video: no final name exists yet, and aborting removes every temporary."""
    assert not set(os.listdir(directory)) & set(FINAL_NAMES)
    for writer in writers:
        writer.abort()
    assert os.listdir(directory) == []


def test_abort_after_some_frames_leaves_no_file_at_all(tmp_path: Path) -> None:
    writers = open_writers(FORMATS, make_meta(), tmp_path, io.StringIO())
    for record in make_records()[:3]:
        for writer in writers:
            writer.write_frame(record)
    assert_abort_leaves_nothing(writers, tmp_path)


def test_an_exception_between_frames_leaves_no_final_name(tmp_path: Path) -> None:
    writers = open_writers(FORMATS, make_meta(), tmp_path, io.StringIO())
    records = make_records()
    wrong_size = dataclasses.replace(records[3], image=records[3].image[:-2])
    with pytest.raises(ValueError, match="expected"):
        for record in [*records[:3], wrong_size]:
            for writer in writers:
                writer.write_frame(record)
    assert_abort_leaves_nothing(writers, tmp_path)


def test_a_new_run_replaces_old_outputs_whole(tmp_path: Path) -> None:
    run(tmp_path)
    run(tmp_path, frames=2)
    assert sorted(os.listdir(tmp_path)) == FINAL_NAMES
    assert sorted(os.listdir(tmp_path / "masks")) == [f"{STRIDE * i:06d}.png" for i in range(2)]
    entries = json.loads((tmp_path / "ytvis.json").read_text())
    assert {len(entry["segmentations"]) for entry in entries} == {2}


def fake_ffmpeg(tmp_path: Path, encode: str) -> Path:
    """An "ffmpeg" that claims libx264 and runs the shell command `encode` instead of encoding."""
    fake = tmp_path.parent / f"{tmp_path.name}-fake-ffmpeg"
    fake.write_text(
        '#!/bin/sh\n'
        'case "$*" in *-encoders*) echo " V..... libx264  fake"; exit 0;; esac\n'
        f'{encode}\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


def test_a_failing_encoder_reports_ffmpeg_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_ffmpeg(tmp_path, 'cat > /dev/null; echo "fake encoder failure" >&2; exit 1')
    monkeypatch.setenv(FFMPEG_ENV, str(fake))
    writer = OverlayWriter(make_meta(), tmp_path / "overlay.mp4")
    assert writer.encoder.startswith(f"libx264 yuv420p (ffmpeg at {fake}")
    for record in make_records():
        writer.write_frame(record)
    with pytest.raises(OutputError, match="fake encoder failure"):
        finish_and_commit([writer])
    assert os.listdir(tmp_path) == []


def test_an_encoder_exiting_mid_video_is_reported_under_the_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FFMPEG_ENV, str(fake_ffmpeg(tmp_path, 'echo "fake encoder failure" >&2; exit 1')))
    final = tmp_path / "overlay.mp4"
    writer = OverlayWriter(make_meta(480, 640), final)
    # A frame larger than the pipe's buffer: the write fails once the encoder has gone.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(OutputError, match=f"^ffmpeg stopped while writing {re.escape(str(final))}: fake encoder failure$"):
            writer.write_frame(make_records(480, 640)[0])
        writer.abort()
        del writer
        gc.collect()
    assert [str(warning.message) for warning in caught if warning.category is ResourceWarning] == []
    assert os.listdir(tmp_path) == []


def test_abort_mid_video_stops_the_encoder_and_closes_its_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FFMPEG_ENV, str(fake_ffmpeg(tmp_path, "cat > /dev/null")))  # an encoder waiting for more
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        writer = OverlayWriter(make_meta(), tmp_path / "overlay.mp4")
        for record in make_records()[:3]:
            writer.write_frame(record)
        writer.abort()
        del writer
        gc.collect()
    assert [str(warning.message) for warning in caught if warning.category is ResourceWarning] == []
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("blocked", ["overlay.mp4", "ytvis.json", "coco.json"])
def test_a_directory_in_the_way_of_one_file_commits_no_format(tmp_path: Path, blocked: str) -> None:
    run(tmp_path)
    old = {name: snapshot(tmp_path / name) for name in FINAL_NAMES if name != blocked}
    remove_quietly(tmp_path / blocked)
    (tmp_path / blocked).mkdir()
    (tmp_path / blocked / "keep").write_text("not ours")
    with pytest.raises(OutputError, match=f"cannot write {re.escape(str(tmp_path / blocked))}: a directory is in the way"):
        run(tmp_path, frames=2)
    # the previous run's outputs are untouched, and no temporary of any format is left
    assert sorted(os.listdir(tmp_path)) == FINAL_NAMES
    assert {name: snapshot(tmp_path / name) for name in old} == old
    assert os.listdir(tmp_path / blocked) == ["keep"]


class FailingWriter:
    """A writer whose `finish()` raises `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.aborted = False

    def write_frame(self, record: FrameRecord) -> None:
        pass

    def finish(self) -> None:
        raise self.error

    def commit(self) -> list[Path]:
        raise AssertionError("committed although finish() failed")

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.parametrize("error", [OutputError("disk full"), KeyboardInterrupt()])
def test_nothing_is_committed_unless_every_writer_finished(tmp_path: Path, error: BaseException) -> None:
    meta = make_meta()
    failing = FailingWriter(error)
    writers = [YtvisWriter(meta, tmp_path / "ytvis.json"), failing, PngMaskWriter(tmp_path / "masks")]
    for record in make_records():
        for writer in writers:
            writer.write_frame(record)
    with pytest.raises(type(error)):
        finish_and_commit(writers)
    assert failing.aborted
    assert os.listdir(tmp_path) == []


def test_segment_commits_no_format_when_one_cannot_be_written(tmp_path: Path, tiny_model: VppModel) -> None:
    source = ImageSequenceSource(write_frames(tmp_path / "frames", moving_clip(2), ".png"), "clip")
    out = tmp_path / "out"
    (out / "clip" / "coco.json").mkdir(parents=True)
    with pytest.raises(OutputError, match="coco.json: a directory is in the way"):
        Segmenter(tiny_model, long_side=96).segment(
            source, formats=("overlay", "ytvis", "coco", "png"), output_dir=out / "clip", stream=io.StringIO()
        )
    assert os.listdir(out / "clip") == ["coco.json"]


def test_atomic_file_and_directory_discard_on_error(tmp_path: Path) -> None:
    final = tmp_path / "results.json"
    with pytest.raises(RuntimeError):
        with AtomicFile(final) as handle:
            handle.write("[")
            assert os.listdir(tmp_path) == [f".results.json.tmp-{os.getpid()}"]
            raise RuntimeError("interrupted")
    directory = AtomicDirectory(tmp_path / "masks")
    (directory.temporary / "000000.png").write_bytes(b"")
    directory.discard()
    assert os.listdir(tmp_path) == []


def test_an_output_directory_below_a_file_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("")
    with pytest.raises(OutputError, match=str(blocker / "clip")):
        open_writers(("ytvis",), make_meta(), blocker / "clip", io.StringIO())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, not root")
def test_a_read_only_output_directory_is_an_output_error(tmp_path: Path) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputError, match=f"{read_only}.*not writable"):
            open_writers(("coco",), make_meta(), read_only, io.StringIO())
    finally:
        read_only.chmod(stat.S_IRWXU)


def test_a_directory_refusing_new_files_is_an_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what a read-only directory does to a non-root user (root ignores permission bits)
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "touch", refuse)
    with pytest.raises(OutputError, match=f"{tmp_path}.*not writable: Permission denied"):
        open_writers(("png",), make_meta(), tmp_path, io.StringIO())
