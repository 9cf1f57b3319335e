"""`vpp synth`: determinism, the YouTube-VIS layout `vpp eval` reads, exact ground truth
(occlusion, reappearance, entering and leaving), atomic writes and the CLI. Tiny videos only."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from vppcli.cli import app
from vppcli.errors import OutputError, UsageError
from vppcli.evaluation.dataset import load_dataset, locate_split
from vppcli.outputs.rle import decode_rle
from vppcli.synth import CATEGORIES, SynthConfig, generate
from vppcli.synth import backgrounds, dataset as synth_dataset
from vppcli.synth.render import MIN_VISIBLE_PIXELS, build_video, render_frames
from vppcli.synth.shapes import shape_mask

runner = CliRunner()
# Procedural backgrounds: the tests must not depend on scikit-image being installed.
TINY = SynthConfig(videos=3, frames=8, height=64, width=96, seed=3, backgrounds="procedural")


@pytest.fixture(autouse=True)
def single_threaded_opencv() -> Iterator[None]:
    """Render as `generate` does in-process, with one OpenCV thread: a thread pool started by
    these tests would hang later tests whose forked DataLoader workers reconfigure OpenCV."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(previous)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, [TINY, SynthConfig(**{**TINY.knobs(), "videos": 2, "split": "valid"})])
    return out


def test_categories_are_distinct_shapes():
    assert len(CATEGORIES) >= 8 and len(set(CATEGORIES)) == len(CATEGORIES)
    assert all(name.isalpha() and name.islower() for name in CATEGORIES)
    masks = [shape_mask(name) for name in CATEGORIES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.8, (CATEGORIES[i], CATEGORIES[j], iou)


def test_layout_loads_and_validates_like_vpp_eval(tiny: Path):
    annotation_file, images = locate_split("ytvis21", tiny, "train")  # the official download's layout
    assert annotation_file == tiny / "train" / "instances.json" and images == tiny / "train" / "JPEGImages"
    data = load_dataset(annotation_file, images)
    data.check_frames(data.videos)
    assert [c.id for c in data.categories] == list(range(1, len(CATEGORIES) + 1))
    assert [c.name for c in data.categories] == list(CATEGORIES)
    assert [v.id for v in data.videos] == [1, 2, 3] and data.has_ground_truth
    for video in data.videos:
        assert video.length == TINY.frames and (video.height, video.width) == (64, 96)
        first = cv2.imread(str(data.frame_files(video)[0]))
        assert first.shape == (64, 96, 3)
    raw = data.data
    assert raw["info"]["seed"] == 3 and raw["info"]["knobs"]["frames"] == 8
    ids = [a["id"] for a in raw["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    per_frame: dict[tuple[int, int], list[np.ndarray]] = {}
    for ann in raw["annotations"]:
        assert 1 <= ann["category_id"] <= len(CATEGORIES) and ann["iscrowd"] == 0
        assert len(ann["segmentations"]) == len(ann["areas"]) == len(ann["bboxes"]) == TINY.frames
        assert any(s is not None for s in ann["segmentations"])
        for t, (rle, area, box) in enumerate(zip(ann["segmentations"], ann["areas"], ann["bboxes"])):
            if rle is None:
                assert area is None and box is None
                continue
            assert rle["size"] == [64, 96] and isinstance(rle["counts"], str)
            mask = decode_rle(rle)
            assert mask.sum() == area >= MIN_VISIBLE_PIXELS
            ys, xs = np.nonzero(mask)
            assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            per_frame.setdefault((ann["video_id"], t), []).append(mask)
    for masks in per_frame.values():  # visible parts never overlap
        assert np.sum(masks, axis=0).max() <= 1


def test_same_category_twice_in_most_videos():
    config = SynthConfig(videos=20, frames=2, height=32, width=32, seed=0, min_objects=3, max_objects=5)
    repeated = 0
    for index in range(config.videos):
        names = build_video(config, index, "procedural").category_names
        repeated += len(set(names)) < len(names)
    assert repeated >= 12


def test_same_seed_same_bytes_other_seed_differs(tiny: Path, tmp_path: Path):
    generate(tmp_path / "again", [TINY, SynthConfig(**{**TINY.knobs(), "videos": 2, "split": "valid"})])
    assert files_of(tmp_path / "again") == files_of(tiny)
    generate(tmp_path / "other", SynthConfig(**{**TINY.knobs(), "seed": 4}))
    other = files_of(tmp_path / "other" / "train")
    same = files_of(tiny / "train")
    assert other["instances.json"] != same["instances.json"]
    assert other["JPEGImages/train_00000/00000.jpg"] != same["JPEGImages/train_00000/00000.jpg"]
    # Splits never share a stream: valid video 0 is not train video 0.
    valid = files_of(tiny / "valid")
    assert valid["JPEGImages/valid_00000/00000.jpg"] != same["JPEGImages/train_00000/00000.jpg"]


def test_worker_count_and_video_count_do_not_change_a_video(tiny: Path, tmp_path: Path):
    generate(tmp_path / "two", TINY, workers=2)
    assert files_of(tmp_path / "two" / "train") == files_of(tiny / "train")
    generate(tmp_path / "one", SynthConfig(**{**TINY.knobs(), "videos": 1}))
    alone = files_of(tmp_path / "one" / "train" / "JPEGImages")
    assert alone == {k: v for k, v in files_of(tiny / "train" / "JPEGImages").items() if k.startswith("train_00000")}


def rendered(config: SynthConfig, index: int):
    video = build_video(config, index, "procedural")
    return video, list(render_frames(video, config))


def test_occluded_pixels_are_removed_from_the_lower_object():
    config = SynthConfig(videos=1, frames=12, height=96, width=128, seed=1, occlusion=1.0, min_objects=4)
    video, frames = rendered(config, 0)
    depth = [o.depth for o in video.plan.objects]
    occluded = 0
    for frame in frames:
        for i, (visible, drawn) in enumerate(zip(frame.masks, frame.drawn)):
            if visible is None:
                continue
            nearer = [d for j, d in enumerate(frame.drawn) if d is not None and depth[j] > depth[i]]
            covered = np.any(nearer, axis=0) if nearer else np.zeros_like(drawn)
            np.testing.assert_array_equal(visible, drawn & ~covered)
            occluded += int((drawn & covered).sum() > 0)
    assert occluded > 0


def test_a_hidden_object_comes_back_with_its_id(tmp_path: Path):
    config = SynthConfig(videos=2, frames=12, height=64, width=96, seed=2, reappear=1.0, occlusion=0.0,
                         backgrounds="procedural")
    video, _ = rendered(config, 0)
    hidden = [np.flatnonzero(o.hidden) for o in video.plan.objects]
    assert sum(len(h) > 0 for h in hidden) == 1
    generate(tmp_path, config)
    data = json.loads((tmp_path / "train" / "instances.json").read_text())
    gaps = []
    for ann in data["annotations"]:
        present = [s is not None for s in ann["segmentations"]]
        first, last = present.index(True), len(present) - 1 - present[::-1].index(True)
        gaps += [ann for t in range(first, last) if not present[t]][:1]
    assert gaps, "no annotation is absent between two visible frames"
    assert {a["video_id"] for a in gaps} >= {1, 2}  # one per video: the hidden object keeps its id


def test_objects_enter_and_leave_the_frame():
    config = SynthConfig(videos=8, frames=16, height=64, width=96, seed=0, occlusion=0.0)
    entered = left = 0
    for index in range(config.videos):
        video, frames = rendered(config, index)
        for i, plan in enumerate(video.plan.objects):
            present = [f.masks[i] is not None for f in frames]
            if plan.motion == "enter":
                assert not present[0] and any(present)
                entered += 1
            if plan.motion == "leave":
                assert present[0] and not present[-1]
                left += 1
    assert entered and left


def test_a_failure_midway_leaves_nothing_and_a_rerun_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    stale = tmp_path / ".train.tmp-999999999"  # left by a crashed run whose process is gone
    stale.mkdir()
    written = []
    real = synth_dataset._write_jpeg

    def failing(path: Path, rgb: np.ndarray, quality: int) -> None:
        if len(written) == 10:
            raise OSError(28, "No space left on device")
        written.append(path)
        real(path, rgb, quality)

    monkeypatch.setattr(synth_dataset, "_write_jpeg", failing)
    with pytest.raises(OutputError, match="No space left"):
        generate(tmp_path, [TINY, SynthConfig(**{**TINY.knobs(), "split": "valid"})])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(synth_dataset, "_write_jpeg", real)
    generate(tmp_path, TINY)
    assert (tmp_path / "train" / "instances.json").is_file()
    with pytest.raises(UsageError, match="--overwrite"):
        generate(tmp_path, TINY)
    generate(tmp_path, TINY, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_procedural_fallback_without_scikit_image(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(backgrounds, "photos_version", lambda: None)
    assert backgrounds.resolve_source("auto") == "procedural"
    with pytest.raises(UsageError, match="scikit-image"):
        backgrounds.resolve_source("photos")
    canvas = backgrounds.make_background(np.random.default_rng(0), 60, 80, "procedural")
    assert canvas.shape == (60, 80, 3) and canvas.dtype == np.uint8 and canvas.std() > 5


def test_photo_backgrounds():
    if backgrounds.photos_version() is None:
        pytest.skip("scikit-image is not installed (the optional extra vppcli[synth])")
    rng = np.random.default_rng(0)
    canvases = [backgrounds.make_background(rng, 60, 80, "photos") for _ in range(4)]
    assert all(c.shape == (60, 80, 3) and c.std() > 5 for c in canvases)


def test_cli_writes_a_dataset_vpp_eval_scores(tmp_path: Path):
    out = tmp_path / "data"
    result = runner.invoke(app, ["synth", str(out), "--videos", "2", "--frames", "3", "--size", "48x64",
                                 "--objects", "2-3", "--backgrounds", "procedural", "--workers", "1",
                                 "--json-summary", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["splits"][0]["videos"] == 2 and summary["splits"][0]["frames"] == 6
    data = json.loads((out / "train" / "instances.json").read_text())
    perfect = [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 0.9,
                "segmentations": a["segmentations"]} for a in data["annotations"]]
    (tmp_path / "results.json").write_text(json.dumps(perfect))
    scored = runner.invoke(app, ["eval", "--annotations", str(out / "train" / "instances.json"),
                                 "--predictions", str(tmp_path / "results.json"), "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["metrics"]["AP"] == pytest.approx(1.0)


def test_vpp_eval_runs_a_model_on_the_layout(tmp_path: Path):
    generate(tmp_path, SynthConfig(videos=1, frames=2, height=64, width=64, backgrounds="procedural"))
    result = runner.invoke(app, ["eval", "--dataset", "ytvis21", "--data-root", str(tmp_path), "--split", "train",
                                 "--preset", "compact", "--allow-class-mismatch", "--size", "64", "--threads", "1",
                                 "-o", str(tmp_path / "eval"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["efficiency"]["frames"] == 2


@pytest.mark.parametrize("args", [
    ["--videos", "0"], ["--frames", "-1"], ["--size", "64"], ["--size", "8x8"], ["--objects", "4-2"],
    ["--objects", "two"], ["--speed", "-1"], ["--occlusion", "1.5"], ["--jpeg-quality", "0"],
    ["--split", "test"], ["--split", "valid", "--valid-videos", "2"], ["--workers", "0"],
    ["--backgrounds", "paintings"], ["--seed", "-3"],
])
def test_cli_bad_values_fail_with_one_line(tmp_path: Path, args: list[str]):
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_existing_split_and_an_output_file(tmp_path: Path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["synth", str(tmp_path), "--videos", "1", "--frames", "1"])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (tmp_path / "train" / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["synth", str(tmp_path / "file"), "--videos", "1", "--frames", "1"])
    assert result.exit_code == 5 and len(result.stderr.strip().splitlines()) == 1
    assert set(os.listdir(tmp_path)) == {"train", "file"}
