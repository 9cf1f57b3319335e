"""Writers together: file layout, atomic commit, abort, failures and unwritable directories."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
from pathlib import Path

import pytest

from outputs_synthetic import NUM_FRAMES, STRIDE, make_meta, make_records
from vppcli.errors import OutputError
from vppcli.outputs import FILE_NAMES, FORMATS, OverlayWriter, open_writers
from vppcli.outputs.atomic import AtomicDirectory, AtomicFile
from vppcli.outputs.encoders import FFMPEG_ENV

FINAL_NAMES = sorted(FILE_NAMES.values())


def run(video_dir: Path, frames: int = NUM_FRAMES) -> tuple[list[Path], io.StringIO]:
    stream = io.StringIO()
    writers = open_writers(FORMATS, make_meta(), video_dir, stream)
    for record in make_records()[:frames]:
        for writer in writers:
            writer.write_frame(record)
    return [path for writer in writers for path in writer.close()], stream


def test_open_writers_lays_out_one_directory_per_video(tmp_path: Path) -> None:
    video_dir = tmp_path / "out" / "clip"
    written, stream = run(video_dir)
    assert sorted(path.name for path in written) == FINAL_NAMES
    assert sorted(os.listdir(video_dir)) == FINAL_NAMES  # no temporaries left
    assert len(stream.getvalue().splitlines()) == NUM_FRAMES


def test_jsonl_alone_creates_no_directory(tmp_path: Path) -> None:
    writers = open_writers(("jsonl",), make_meta(), tmp_path / "clip", io.StringIO())
    assert [writer.close() for writer in writers] == [[]]
    assert not (tmp_path / "clip").exists()


def test_abort_after_some_frames_leaves_no_file_at_all(tmp_path: Path) -> None:
    writers = open_writers(FORMATS, make_meta(), tmp_path, io.StringIO())
    for record in make_records()[:3]:
        for writer in writers:
            writer.write_frame(record)
    assert not set(os.listdir(tmp_path)) & set(FINAL_NAMES)
    for writer in writers:
        writer.abort()
    assert os.listdir(tmp_path) == []


def test_an_exception_between_frames_leaves_no_final_name(tmp_path: Path) -> None:
    writers = open_writers(FORMATS, make_meta(), tmp_path, io.StringIO())
    records = make_records()
    wrong_size = dataclasses.replace(records[3], image=records[3].image[:-2])
    with pytest.raises(ValueError, match="expected"):
        for record in [*records[:3], wrong_size]:
            for writer in writers:
                writer.write_frame(record)
    assert not set(os.listdir(tmp_path)) & set(FINAL_NAMES)
    for writer in writers:
        writer.abort()
    assert os.listdir(tmp_path) == []


def test_a_new_run_replaces_old_outputs_whole(tmp_path: Path) -> None:
    run(tmp_path)
    run(tmp_path, frames=2)
    assert sorted(os.listdir(tmp_path)) == FINAL_NAMES
    assert sorted(os.listdir(tmp_path / "masks")) == [f"{STRIDE * i:06d}.png" for i in range(2)]
    entries = json.loads((tmp_path / "ytvis.json").read_text())
    assert {len(entry["segmentations"]) for entry in entries} == {2}


def test_a_failing_encoder_reports_ffmpeg_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path.parent / f"{tmp_path.name}-fake-ffmpeg"
    fake.write_text(
        '#!/bin/sh\n'
        'case "$*" in *-encoders*) echo " V..... libx264  fake"; exit 0;; esac\n'
        'cat > /dev/null; echo "fake encoder failure" >&2; exit 1\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(FFMPEG_ENV, str(fake))
    writer = OverlayWriter(make_meta(), tmp_path / "overlay.mp4")
    assert writer.encoder.startswith(f"libx264 yuv420p (ffmpeg at {fake}")
    for record in make_records():
        writer.write_frame(record)
    with pytest.raises(OutputError, match="fake encoder failure"):
        writer.close()
    assert os.listdir(tmp_path) == []


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
