"""`vpp segment` and `Segmenter` end to end on small generated clips (random weights)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import decord
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner, Result

import vppcli.cli.segment as segment_cli
from examples.make_clip import scene_frames
from tests.video_files import write_frames, write_video
from vppcli.cli import app
from vppcli.errors import UsageError
from vppcli.model.rovis import VppModel
from vppcli.segmenter import Segmenter
from vppcli.video import FrameSelection

runner = CliRunner()
HEIGHT, WIDTH, FRAMES, FPS = 48, 80, 6, 12.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", list(scene_frames(FRAMES, HEIGHT, WIDTH)), FPS)


def run(args: list[str], model: VppModel | None, monkeypatch: pytest.MonkeyPatch, stdin: str | None = None) -> Result:
    if model is not None:
        monkeypatch.setattr(segment_cli, "_load_model", lambda weights, preset, device: model)
    size = [] if "--size" in args else ["--size", "96"]
    return runner.invoke(app, ["segment", *args, *size, "--device", "cpu"], input=stdin)


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_every_format_round_trips(clip: Path, tmp_path: Path, detecting_model: VppModel,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    result = run([str(clip), "-f", "overlay,ytvis", "-f", "coco,png,jsonl", "-o", str(tmp_path), "--json-summary"],
                 detecting_model, monkeypatch)
    assert result.exit_code == 0, result.output
    *frame_lines, summary_line = result.stdout.strip().splitlines()
    frames = [json.loads(line) for line in frame_lines]
    summary = json.loads(summary_line)["summary"]
    assert [f["frame"] for f in frames] == list(range(FRAMES))
    assert [f["timestamp"] for f in frames] == pytest.approx([i / FPS for i in range(FRAMES)], abs=1e-5)
    assert summary["frames"] == FRAMES and summary["failed"] == []
    assert summary["videos"][0]["overlay_encoder"].startswith(("libx264", "mp4v"))
    out = tmp_path / "clip"
    assert visible(out) == ["coco.json", "masks", "overlay.mp4", "ytvis.json"]

    ids_seen = {inst["id"] for f in frames for inst in f["instances"]}
    assert ids_seen and summary["tracks"] == len(ids_seen)
    masks_by_frame = [{inst["id"]: decode(inst["rle"]) for inst in f["instances"]} for f in frames]

    # PNG: pixel value = track id; every pixel of an instance that no other instance covers has its id.
    for index, masks in enumerate(masks_by_frame):
        png = np.array(Image.open(out / "masks" / f"{index:06d}.png"))  # palette indices = track ids
        assert png.shape == (HEIGHT, WIDTH)
        coverage = sum((m.astype(int) for m in masks.values()), np.zeros((HEIGHT, WIDTH), int))
        for track_id, mask in masks.items():
            assert np.all(png[mask & (coverage == 1)] == track_id)
        assert np.all(png[coverage == 0] == 0)
        assert set(np.unique(png)) - {0} <= set(masks)

    # YouTube-VIS: one entry per track, one RLE (or null) per processed frame, matching the frames.
    ytvis = json.loads((out / "ytvis.json").read_text())
    assert len(ytvis) == len(ids_seen)
    for entry in ytvis:
        assert entry["video_id"] == 1 and len(entry["segmentations"]) == FRAMES
        for index, rle in enumerate(entry["segmentations"]):
            if rle is not None:
                assert any(np.array_equal(decode(rle), m) for m in masks_by_frame[index].values())

    # COCO: one image per frame, annotations carrying the track ids and the same masks.
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == FRAMES
    assert {a["track_id"] for a in coco["annotations"]} == ids_seen
    for annotation in coco["annotations"]:
        index = next(i["frame_index"] for i in coco["images"] if i["id"] == annotation["image_id"])
        assert np.array_equal(decode(annotation["segmentation"]), masks_by_frame[index][annotation["track_id"]])

    # Overlay: decodes with decord, original size, every frame, original fps.
    reader = decord.VideoReader(str(out / "overlay.mp4"))
    assert len(reader) == FRAMES and reader[0].shape == (HEIGHT, WIDTH, 3)
    assert reader.get_avg_fps() == pytest.approx(FPS)


def test_start_and_stride_keep_the_original_timing(clip: Path, tmp_path: Path, detecting_model: VppModel,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    result = run([str(clip), "-f", "jsonl,overlay,ytvis", "-o", str(tmp_path), "--start", "1", "--stride", "2",
                  "--max-frames", "2"], detecting_model, monkeypatch)
    assert result.exit_code == 0, result.output
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert [f["frame"] for f in frames] == [1, 3]
    assert [f["timestamp"] for f in frames] == pytest.approx([1 / FPS, 3 / FPS], abs=1e-5)
    reader = decord.VideoReader(str(tmp_path / "clip" / "overlay.mp4"))
    assert len(reader) == 2 and reader.get_avg_fps() == pytest.approx(FPS / 2)
    assert all(len(e["segmentations"]) == 2 for e in json.loads((tmp_path / "clip" / "ytvis.json").read_text()))


def test_stdin_paths_and_one_bad_input_among_several(clip: Path, tmp_path: Path, detecting_model: VppModel,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write_frames(tmp_path / "frames" / "clip", list(scene_frames(3, HEIGHT, WIDTH)))
    stdin = f"{clip}\n\n{tmp_path / 'missing.mp4'}\n{tmp_path / 'frames' / 'clip'}\n"
    result = run(["-", "-f", "ytvis", "-o", str(tmp_path / "out"), "--json-summary", "--quiet"],
                 detecting_model, monkeypatch, stdin)
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [f"error: no such file or directory: {tmp_path / 'missing.mp4'}"]
    summary = json.loads(result.stdout)["summary"]
    assert [(v["name"], v["frames"], v["video_id"]) for v in summary["videos"]] == [("clip", FRAMES, 1),
                                                                                    ("clip-2", 3, 3)]
    assert [f["exit_code"] for f in summary["failed"]] == [3]
    assert (tmp_path / "out" / "clip" / "ytvis.json").is_file()
    assert (tmp_path / "out" / "clip-2" / "ytvis.json").is_file()


def bad_input(kind: str, tmp_path: Path, clip: Path) -> Path:
    path = tmp_path / "input.mp4"
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "truncated":
        data = clip.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty_dir":
        path = tmp_path / "frames"
        path.mkdir()
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "empty_dir", "zero_bytes"])
def test_unreadable_input_exits_3_with_one_line_and_writes_nothing(
    kind: str, clip: Path, tmp_path: Path, detecting_model: VppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bad_input(kind, tmp_path, clip)
    result = run([str(path), "-f", "overlay,ytvis,png", "-o", str(tmp_path / "out")], detecting_model, monkeypatch)
    assert result.exit_code == 3
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--keep-ratio", "1.5"], 2, "--keep-ratio must be in (0, 1]"),
    (["--keep-ratio", "0"], 2, "--keep-ratio must be in (0, 1]"),
    (["-f", "overlay,gif"], 2, "unknown output format 'gif'"),
    (["--classes", "person,unicorn"], 2, "unknown class name(s) unicorn"),
    (["--keep-ratio", "0.05"], 2, "--keep-ratio 0.05 is unreachable"),  # block 0 is always dense
    (["--size", "100000"], 2, "--size sides must be between 32 and 4096"),
    (["--size", "big"], 2, "--size must be a long side N or HEIGHTxWIDTH"),
    (["--classes", ","], 2, "--classes names no class"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], code: int, message: str, clip: Path, tmp_path: Path,
                                          detecting_model: VppModel, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run([str(clip), "-o", str(tmp_path), *args], detecting_model, monkeypatch)
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_no_model_and_unwritable_output(clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run([str(clip), "-o", str(tmp_path)], None, monkeypatch)
    assert result.exit_code == 2 and "--weights" in result.stderr
    result = run([str(clip), "-o", str(tmp_path), "--preset", "compact", "--weights", "x.safetensors"], None,
                 monkeypatch)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: give either --weights or --preset, not both"]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run([str(clip), "--preset", "compact", "-o", str(blocker / "out")], None, monkeypatch)
    assert result.exit_code == 5
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot create output directory" in result.stderr


@pytest.mark.parametrize("failure", ["interrupt", "decode_error"])
def test_failure_mid_video_leaves_no_file(failure: str, clip: Path, tmp_path: Path, detecting_model: VppModel,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from vppcli.efficiency import EfficiencyMeter
    from vppcli.errors import InputError

    calls = {"frames": 0}
    real_add_frame = EfficiencyMeter.add_frame

    def count_then_fail(self: EfficiencyMeter, config, stats) -> None:  # noqa: ANN001
        calls["frames"] += 1
        if calls["frames"] == 3:
            raise KeyboardInterrupt if failure == "interrupt" else InputError("decode error at frame 2 of clip.mp4")
        real_add_frame(self, config, stats)

    monkeypatch.setattr(EfficiencyMeter, "add_frame", count_then_fail)
    result = run([str(clip), "-f", "overlay,ytvis,coco,png", "-o", str(tmp_path / "out")], detecting_model,
                 monkeypatch)
    assert result.exit_code == (130 if failure == "interrupt" else 3)
    assert files_under(tmp_path / "out") == []  # no final file and no temporary either


def test_segmenter_api_is_deterministic_and_filters(clip: Path, detecting_model: VppModel) -> None:
    def signature(segmenter: Segmenter) -> list[tuple]:
        return [(item.index, item.instances.track_ids.tolist(), item.instances.labels.tolist(),
                 item.instances.masks.sum((1, 2)).tolist()) for item in segmenter.stream(clip)]

    plain = Segmenter(detecting_model, keep_ratio=0.45, long_side=96)
    assert signature(plain) == signature(plain)  # same input, same output
    items = list(plain.stream(clip, FrameSelection(max_frames=3)))
    assert [i.index for i in items] == [0, 1, 2] and items[0].instances.masks.device.type == "cpu"
    scores = np.concatenate([i.instances.scores.numpy() for i in plain.stream(clip)])
    threshold = float(np.median(scores))
    strict = Segmenter(detecting_model, keep_ratio=0.45, long_side=96, score_threshold=threshold)
    kept = np.concatenate([i.instances.scores.numpy() for i in strict.stream(clip)])
    assert len(kept) == int((scores >= threshold).sum()) and len(kept) < len(scores)
    label = int(next(i.instances.labels[0] for i in plain.stream(clip) if len(i.instances)))
    name = detecting_model.config.class_names[label]
    only = Segmenter(detecting_model, long_side=96, keep_ratio=0.45, classes=[name])
    assert all(set(i.instances.labels.tolist()) <= {label} for i in only.stream(clip))
    with pytest.raises(UsageError):
        Segmenter(detecting_model, keep_ratio=0.0)


def test_weights_file_is_loaded_and_a_bad_checkpoint_exits_4(clip: Path, tmp_path: Path,
                                                             detecting_model: VppModel) -> None:
    from vppcli.checkpoints import save_model

    weights = save_model(detecting_model, tmp_path / "model.safetensors")
    args = ["segment", str(clip), "-f", "jsonl", "--size", "96", "--device", "cpu", "--max-frames", "2"]
    result = runner.invoke(app, [*args, "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    direct = [json.loads(line) for line in run_direct(detecting_model, clip)]
    assert [json.loads(line) for line in result.stdout.splitlines()] == direct  # same weights, same output

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(weights.read_bytes()[:1000])
    for bad in (broken, tmp_path / "absent.safetensors"):
        result = runner.invoke(app, [*args, "--weights", str(bad)])
        assert result.exit_code == 4
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0]


def run_direct(model: VppModel, clip: Path) -> list[str]:
    import io

    stream = io.StringIO()
    Segmenter(model, long_side=96).segment(clip, formats=("jsonl",), selection=FrameSelection(max_frames=2),
                                           stream=stream)
    return stream.getvalue().splitlines()


def test_closing_stdout_early_exits_141_and_leaves_no_file(clip: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "vppcli", "segment", str(clip), "--preset", "compact", "--size", "64", "-f",
         "jsonl,ytvis", "-o", str(tmp_path), "--json-summary", "--quiet", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    assert process.wait(timeout=120) == 141, process.stderr.read()
    assert json.loads(first)["frame"] == 0
    assert files_under(tmp_path) == []


def test_out_of_memory_is_one_line_and_writes_nothing(clip: Path, tmp_path: Path, detecting_model: VppModel,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from vppcli.inference import VideoPredictor

    def no_memory(*_args: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 67500000000 bytes.")

    monkeypatch.setattr(VideoPredictor, "step", no_memory)
    result = run([str(clip), "-o", str(tmp_path), "-q"], detecting_model, monkeypatch)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory at frame 0 of") and "--size" in lines[0]
    assert files_under(tmp_path) == []


def test_track_ids_shown_are_dense_in_order_of_first_appearance(clip: Path, tmp_path: Path,
                                                                 detecting_model: VppModel,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    result = run([str(clip), "-f", "jsonl", "-q"], detecting_model, monkeypatch)
    assert result.exit_code == 0, result.output
    order: list[int] = []
    for line in result.stdout.splitlines():
        order.extend(i["id"] for i in json.loads(line)["instances"] if i["id"] not in order)
    assert order == list(range(1, len(order) + 1)) and order


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def test_a_rerun_never_mixes_its_files_with_an_earlier_run(clip: Path, tmp_path: Path, detecting_model: VppModel,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    common = [str(clip), "-o", str(out), "--max-frames", "2", "-q"]
    assert run([*common, "-f", "overlay,png,pruning-json"], detecting_model, monkeypatch).exit_code == 0
    first = {name: (out / "clip" / name).stat().st_mtime_ns for name in visible(out / "clip")}
    # Default: a fresh directory per run; the earlier one is left exactly as it was.
    result = run([*common, "-f", "ytvis", "--json-summary"], detecting_model, monkeypatch)
    assert result.exit_code == 0, result.output
    assert visible(out / "clip-2") == ["ytvis.json"]
    assert {name: (out / "clip" / name).stat().st_mtime_ns for name in visible(out / "clip")} == first
    assert json.loads(result.stdout)["summary"]["videos"][0]["outputs"] == [str(out / "clip-2" / "ytvis.json")]
    # --exist-ok: the run replaces the earlier run in NAME/ whole, and only what vppcli wrote there.
    (out / "clip" / "notes.txt").write_text("mine")
    failed = run([*common, "-f", "coco", "--exist-ok", "--start", "50"], detecting_model, monkeypatch)
    assert failed.exit_code == 2  # empty selection: nothing committed, nothing removed
    assert visible(out / "clip") == ["masks", "notes.txt", "overlay.mp4", "pruning.jsonl"]
    (out / "clip" / "ytvis.json").write_text("[]")  # an output's name, but vppcli has no record of it
    result = run([str(clip), "-o", str(out), "--max-frames", "2", "-f", "coco", "--exist-ok"], detecting_model,
                 monkeypatch)
    assert result.exit_code == 0, result.output
    assert visible(out / "clip") == ["coco.json", "notes.txt", "ytvis.json"]
    assert "left ytvis.json in place, not from this run" in result.stderr
    assert sorted(os.listdir(out)) == ["clip", "clip-2"]


def test_frames_read_from_image_files_keep_their_file_names(tmp_path: Path, detecting_model: VppModel,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    frames = write_frames(tmp_path / "nat", list(scene_frames(3, HEIGHT, WIDTH)))  # 00000.jpg, 00005.jpg, ...
    photo = write_frames(tmp_path / "photos", list(scene_frames(1, HEIGHT, WIDTH)), ".png")[0]
    result = run([str(tmp_path / "nat"), "-f", "coco,jsonl", "-o", str(tmp_path / "out"), "-q", "--start", "1"],
                 detecting_model, monkeypatch)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [f"nat/{frames[1].name}", f"nat/{frames[2].name}"]
    assert [line["file"] for line in lines] == expected
    coco = json.loads((tmp_path / "out" / "nat" / "coco.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == expected
    assert [image["frame_index"] for image in coco["images"]] == [1, 2]
    # a single image keeps its own name
    result = run([str(photo), "-f", "coco,jsonl", "-o", str(tmp_path / "out"), "-q"], detecting_model, monkeypatch)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["file"] == photo.name == "00000.png"
    coco = json.loads((tmp_path / "out" / "00000" / "coco.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == [photo.name]


def test_an_image_input_gets_image_overlay_and_pruning_view(tmp_path: Path, detecting_model: VppModel,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    photo = write_frames(tmp_path / "photos", list(scene_frames(1, HEIGHT, WIDTH)), ".jpg")[0]
    out = tmp_path / "out"
    result = run([str(photo), "-f", "overlay,pruning,ytvis", "-o", str(out), "-q", "--json-summary"],
                 detecting_model, monkeypatch)
    assert result.exit_code == 0, result.output
    video_dir = out / photo.stem
    assert visible(video_dir) == ["overlay.png", "pruning.png", "ytvis.json"]
    assert json.loads(result.stdout)["summary"]["videos"][0]["overlay_encoder"] == "PNG (OpenCV)"
    overlay = np.array(Image.open(video_dir / "overlay.png"))
    assert overlay.shape == (HEIGHT, WIDTH, 3)
    assert Image.open(video_dir / "pruning.png").format == "PNG"
    # a one-frame directory is still a video
    write_frames(tmp_path / "one", list(scene_frames(1, HEIGHT, WIDTH)))
    result = run([str(tmp_path / "one"), "-f", "overlay", "-o", str(out), "-q"], detecting_model, monkeypatch)
    assert result.exit_code == 0, result.output
    assert visible(out / "one") == ["overlay.mp4"]


def test_a_damaged_video_gives_the_same_partial_result_with_both_readers(
    tmp_path: Path, detecting_model: VppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.video_files import damaged_faststart_copy, noisy_striped_clip

    damaged = damaged_faststart_copy(write_video(tmp_path / "noisy.mp4", noisy_striped_clip(40), fps=25.0),
                                     tmp_path / "damaged.mp4")
    outcomes = []
    for backend in ("decord", "opencv"):
        result = run([str(damaged), "-f", "ytvis,jsonl", "-o", str(tmp_path / backend), "--backend", backend,
                      "--json-summary", "--size", "64"], detecting_model, monkeypatch)
        assert result.exit_code == 0, result.output
        *lines, summary = result.stdout.splitlines()
        video = json.loads(summary)["summary"]["videos"][0]
        assert 0 < video["frames"] == video["ended_at_frame"] == len(lines) < 40
        assert f"cannot decode frame {video['frames']}" in result.stderr
        ytvis = json.loads((tmp_path / backend / "damaged" / "ytvis.json").read_text())
        assert {len(entry["segmentations"]) for entry in ytvis} <= {video["frames"]}
        outcomes.append([json.loads(line) for line in lines])
    assert outcomes[0] == outcomes[1]  # same frames decoded, same results
