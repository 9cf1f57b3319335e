"""`vpp eval` end to end on the generated YouTube-VIS fixture with a small random-weight model:
outputs, resume and sharding give identical results, errors are one line."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.ytvis_fixture import CATEGORIES, HEIGHT, WIDTH, Fixture, build_fixture, perfect_results
from vppcli.checkpoints import save_model
from vppcli.cli import app
from vppcli.config import YTVIS_2021_CLASSES, preset
from vppcli.evaluation import Category
from vppcli.evaluation import runner as eval_runner
from vppcli.model.rovis import build_model

runner = CliRunner()
FAST = ["--size", "96", "--device", "cpu", "--threads", "1"]


def _checkpoint(path: Path, names: tuple[str, ...], ids: tuple[int, ...]) -> Path:
    """Random compact weights whose tracker keeps every detection, so the untrained model still
    produces tracks to score, merge and compare."""
    config = preset("compact")
    config = config.replace(
        class_names=names, category_ids=ids, head=dataclasses.replace(config.head, num_classes=len(names)),
        tracker=dataclasses.replace(config.tracker, track_score_threshold=0.0, new_score_threshold=0.0),
    )
    torch.manual_seed(0)
    return save_model(build_model(config), path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return build_fixture(tmp_path_factory.mktemp("ytvis"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    names = tuple(c["name"] for c in CATEGORIES)
    return _checkpoint(tmp_path_factory.mktemp("weights") / "fixture.safetensors", names,
                       tuple(c["id"] for c in CATEGORIES))


def _eval(data: Fixture, weights: Path, out: Path, *extra: str) -> dict:
    args = ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train",
            "--weights", str(weights), "-o", str(out), *FAST, "--json", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def baseline(data: Fixture, weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("baseline")
    return _eval(data, weights, out), out


def test_end_to_end_outputs_metrics_and_efficiency(data, baseline):
    report, out = baseline
    results = json.loads((out / "results.json").read_text())
    assert results and {r["video_id"] for r in results} <= {3, 7, 12}
    assert [r["video_id"] for r in results] == sorted(r["video_id"] for r in results)
    lengths = {v["id"]: v["length"] for v in data.data["videos"]}
    assert all(len(r["segmentations"]) == lengths[r["video_id"]] for r in results)
    with zipfile.ZipFile(out / "results.zip") as archive:
        assert archive.namelist() == ["results.json"]
        assert json.loads(archive.read("results.json")) == results
    assert report["ground_truth"] and report["num_results"] == len(results) and report["num_ground_truth"] == 7
    assert all(0.0 <= report["metrics"][k] <= 1.0 for k in ("AP", "AP50", "AR100"))
    assert set(report["per_category"]) == {"person", "car", "dog"}
    efficiency = report["efficiency"]
    assert efficiency["frames"] == 15 and len(efficiency["keep_ratio_per_block"]) == 12
    assert efficiency["keep_ratio_per_block"][0] == 1.0 and 0 < efficiency["keep_ratio"] < 1
    gflops = efficiency["gflops_per_frame"]
    assert gflops["total"] == pytest.approx(gflops["backbone"] + gflops["head"], abs=2e-3)
    assert efficiency["peak_memory_mb"] > 0 and efficiency["fps"] > 0
    assert json.loads((out / "metrics.json").read_text())["metrics"] == report["metrics"]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["12.json", "3.json", "7.json", "run.json"]


def test_scoring_an_existing_results_file_gives_the_same_metrics(data, baseline):
    report, out = baseline
    for predictions in (out / "results.json", out / "results.zip"):
        result = runner.invoke(app, ["eval", "--predictions", str(predictions), "--annotations",
                                     str(data.annotation_file), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["metrics"] == report["metrics"]
    table = runner.invoke(app, ["eval", "--predictions", str(out / "results.json"), "--dataset", "ytvis21",
                                "--data-root", str(data.root), "--split", "train", "--per-class"])
    assert table.exit_code == 0 and "AP per category" in table.stdout and "person" in table.stdout


def test_interrupted_run_resumes_to_identical_results(data, weights, baseline, tmp_path, monkeypatch):
    report, out = baseline
    original = eval_runner._run_video
    calls = {"n": 0}

    def interrupt_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(eval_runner, "_run_video", interrupt_second)
    interrupted = runner.invoke(app, ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split",
                                      "train", "--weights", str(weights), "-o", str(tmp_path), *FAST])
    assert interrupted.exit_code == 130 and "--resume" in interrupted.stderr
    assert sorted(p.name for p in (tmp_path / "predictions").glob("*.json")) == ["3.json", "run.json"]
    monkeypatch.setattr(eval_runner, "_run_video", original)

    again = runner.invoke(app, ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train",
                                "--weights", str(weights), "-o", str(tmp_path), *FAST])
    assert again.exit_code == 2 and "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    changed = runner.invoke(app, ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train",
                                  "--weights", str(weights), "-o", str(tmp_path), *FAST, "--resume",
                                  "--keep-ratio", "0.5"])
    assert changed.exit_code == 2 and "keep_ratio was None, now 0.5" in changed.stderr

    resumed = _eval(data, weights, tmp_path, "--resume")
    assert resumed["resumed_videos"] == 1
    assert (tmp_path / "results.json").read_bytes() == (out / "results.json").read_bytes()
    assert resumed["metrics"] == report["metrics"]
    for key in ("frames", "keep_ratio", "keep_ratio_per_block", "gflops_per_frame"):
        assert resumed["efficiency"][key] == report["efficiency"][key]


def test_two_shards_give_identical_results(data, weights, baseline, tmp_path):
    report, out = baseline
    sharded = _eval(data, weights, tmp_path, "--shards", "2")
    # Random weights score alike whatever the tracks; the equal, non-empty files are the real check.
    assert json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.json").read_bytes() == (out / "results.json").read_bytes()
    assert sharded["metrics"] == report["metrics"]
    for key in ("frames", "keep_ratio", "keep_ratio_per_block", "gflops_per_frame"):
        assert sharded["efficiency"][key] == report["efficiency"][key]


def test_a_failing_shard_is_one_line_with_its_exit_code(weights, tmp_path):
    data = build_fixture(tmp_path / "data")
    (data.images / "video_1" / "00010.jpg").write_bytes(b"not a jpeg")  # video 3, found only when read
    result = runner.invoke(app, ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train",
                                 "--weights", str(weights), "-o", str(tmp_path / "out"), *FAST, "--shards", "2",
                                 "--limit", "2", "--quiet"])  # no progress lines: the error line alone
    assert result.exit_code == 3, result.output
    assert "video_1/00010.jpg" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_interrupting_a_sharded_run_stops_the_workers(data, weights, tmp_path, monkeypatch):
    count_done = eval_runner._count_done
    calls = {"n": 0}

    def interrupt_after_start(job):
        calls["n"] += 1  # the first call checks the output directory, the next ones poll the workers
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return count_done(job)

    monkeypatch.setattr(eval_runner, "_count_done", interrupt_after_start)
    result = runner.invoke(app, ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train",
                                 "--weights", str(weights), "-o", str(tmp_path), *FAST, "--shards", "2"])
    assert result.exit_code == 130 and "--resume" in result.stderr, result.output
    assert not multiprocessing.active_children()


@pytest.mark.parametrize(("run_file", "message"), [("{", "is not valid JSON"), ("[1]", "is not a run record")])
def test_an_unusable_run_record_blocks_resume_but_not_overwrite(data, weights, tmp_path, run_file, message):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / "run.json").write_text(run_file)
    args = ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train", "--weights",
            str(weights), "-o", str(tmp_path), "--videos", "3", *FAST]
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 3 and message in resumed.stderr and "--overwrite" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1 and "Traceback" not in resumed.output
    # A run record without a finished video (a run that crashed at start) holds nothing to lose: no flag needed.
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert runner.invoke(app, args).exit_code == 2  # now a finished video is there: not discarded silently
    overwritten = runner.invoke(app, [*args, "--overwrite"])
    assert overwritten.exit_code == 0, overwritten.output
    assert json.loads((predictions / "run.json").read_text())["weights"] == str(weights)


def test_a_crashed_start_never_blocks_the_corrected_rerun(data, weights, tmp_path, monkeypatch):
    args = ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train", "--weights",
            str(weights), "-o", str(tmp_path), "--videos", "3", *FAST]
    refused = runner.invoke(app, [*args, "--keep-ratio", "0.05"])  # refused before any work
    assert refused.exit_code == 2 and "unreachable" in refused.stderr and not (tmp_path / "predictions").exists()

    def crash(*_args, **_kwargs):
        raise RuntimeError("a bug in the first video")

    monkeypatch.setattr(eval_runner, "_run_video", crash)
    assert runner.invoke(app, args).exit_code != 0  # the run record is written, no video finished
    monkeypatch.undo()
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output


def test_a_random_preset_leaves_the_global_rng_alone():
    categories = tuple(Category(c["id"], c["name"]) for c in CATEGORIES)
    settings = eval_runner.RunSettings(eval_runner.ModelSpec(preset="compact"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # a state the model's own seeding could not leave behind by chance
        state = torch.random.get_rng_state()
        first, _ = eval_runner.load_eval_model(settings, categories, torch.device("cpu"))
        assert torch.equal(torch.random.get_rng_state(), state)
        torch.rand(3)  # whatever the caller's RNG did, every process builds the same weights
        second, _ = eval_runner.load_eval_model(settings, categories, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_user_paths_are_printed_verbatim(data, weights, tmp_path):
    out = tmp_path / "r[/z]" / "[final]"
    result = runner.invoke(app, ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train",
                                 "--weights", str(weights), "-o", str(out), "--videos", "3", *FAST])
    assert result.exit_code == 0, result.output
    assert f"metrics: {out / 'metrics.json'}" in result.stdout
    assert f"submission: {out / 'results.zip'}" in result.stdout


@pytest.mark.parametrize("counts", [5, ["a"]])
def test_bad_rle_counts_in_predictions_are_one_line(data, tmp_path, counts):
    results = perfect_results(data.data)
    results[0]["segmentations"][0] = {"size": [HEIGHT, WIDTH], "counts": counts}
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(results))
    result = runner.invoke(app, ["eval", "--predictions", str(predictions), "--annotations", str(data.annotation_file)])
    assert result.exit_code == 3 and "result 0 (video 7), frame 0: bad RLE counts" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_preset_on_a_split_without_ground_truth_in_the_mmtrack_layout(tmp_path):
    data = build_fixture(tmp_path / "data", layout="mmtrack", split="valid", ground_truth=False)
    result = runner.invoke(app, ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--preset",
                                 "compact", "--limit", "1", "-o", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 0, result.output
    assert "random weights" in result.stderr and "no ground truth" in result.stderr
    assert "submission:" in result.stdout and "PKR" in result.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["metrics"] is None and metrics["videos"] == 1 and metrics["efficiency"]["frames"] == 4
    assert (tmp_path / "out" / "results.zip").is_file()
    scored = runner.invoke(app, ["eval", "--predictions", str(tmp_path / "out" / "results.json"),
                                 "--annotations", str(data.annotation_file)])
    assert scored.exit_code == 3 and "no ground truth" in scored.stderr


def test_class_mismatch_is_refused_unless_allowed(data, tmp_path):
    ytvis21 = _checkpoint(tmp_path / "ytvis21.safetensors", YTVIS_2021_CLASSES,
                          tuple(range(1, len(YTVIS_2021_CLASSES) + 1)))
    args = ["eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train", "--weights",
            str(ytvis21), "-o", str(tmp_path / "out"), "--videos", "3", *FAST]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--allow-class-mismatch" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    allowed = runner.invoke(app, [*args, "--allow-class-mismatch", "--json"])
    assert allowed.exit_code == 0, allowed.output
    ids = {c["id"] for c in CATEGORIES}
    assert all(r["category_id"] in ids for r in json.loads((tmp_path / "out" / "results.json").read_text()))


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--data-root", "{root}/nowhere"], 3, "is not a directory"),
    (["--data-root", "{tmp}"], 3, "no YouTube-VIS 2021 data under"),
    (["--data-root", "{root}", "--split", "valid"], 3, "no split 'valid' of YouTube-VIS 2021 under"),
    (["--data-root", "{root}", "--split", "train", "--videos", "3,99"], 2, "no video with id 99"),
    (["--data-root", "{root}", "--split", "train", "--videos", "x"], 2, "--videos must be"),
    (["--data-root", "{root}", "--split", "train", "--missing-frame"], 3, "missing frame"),
    (["--data-root", "{root}", "--split", "train", "--no-model"], 2, "no model"),
])
def test_errors_are_one_line(tmp_path, args, code, message, monkeypatch):
    monkeypatch.setattr("vppcli.checkpoints.registry.bundled_dirs", lambda: (tmp_path / "no-bundled-model",))
    data = build_fixture(tmp_path / "data")
    missing_frame = "--missing-frame" in args
    if missing_frame:
        (data.images / "video_1" / "00010.jpg").unlink()
    model = [] if "--no-model" in args else ["--preset", "compact"]
    args = [a.format(root=data.root, tmp=tmp_path) for a in args if a not in ("--missing-frame", "--no-model")]
    result = runner.invoke(app, ["eval", "--dataset", "ytvis21", *args, *model, "-o", str(tmp_path / "out"), *FAST])
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    if missing_frame:
        assert "video_1/00010.jpg" in result.stderr


def test_results_naming_unknown_videos_are_refused(data, tmp_path):
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps([{"video_id": 42, "category_id": 1, "score": 0.5, "segmentations": [None]}]))
    result = runner.invoke(app, ["eval", "--predictions", str(predictions), "--annotations", str(data.annotation_file)])
    assert result.exit_code == 3 and "unknown video ids 42" in result.stderr


def test_torchrun_ranks_split_the_videos_and_rank_0_merges(data, weights, baseline, tmp_path):
    report, out = baseline
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vppcli", "eval", "--dataset", "ytvis21", "--data-root", str(data.root), "--split", "train",
               "--weights", str(weights), "-o", str(tmp_path), *FAST, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["metrics"] == report["metrics"]  # printed once, by rank 0
    assert json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.json").read_bytes() == (out / "results.json").read_bytes()


def test_local_validation_split_from_train(data, tmp_path):
    args = ["eval-split", "--dataset", "ytvis21", "--data-root", str(data.root), "--val-videos", "2",
            "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"--images {data.images}" in result.stdout
    val = json.loads((tmp_path / "local_val.json").read_text())
    train = json.loads((tmp_path / "local_train.json").read_text())
    val_ids, train_ids = {v["id"] for v in val["videos"]}, {v["id"] for v in train["videos"]}
    assert len(val_ids) == 2 and val_ids | train_ids == {3, 7, 12} and not val_ids & train_ids
    assert {a["video_id"] for a in val["annotations"]} == val_ids and val["categories"] == data.data["categories"]
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(perfect_results(val)))
    scored = runner.invoke(app, ["eval", "--predictions", str(predictions), "--annotations",
                                 str(tmp_path / "local_val.json"), "--json"])
    assert scored.exit_code == 0 and json.loads(scored.stdout)["metrics"]["AP"] == pytest.approx(1.0)
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_eval_split_names_an_annotation_without_a_video(data, tmp_path):
    broken = dict(data.data, annotations=[{k: v for k, v in a.items() if k != "video_id"}
                                          for a in data.data["annotations"]])
    annotations = tmp_path / "broken.json"
    annotations.write_text(json.dumps(broken))
    result = runner.invoke(app, ["eval-split", "--annotations", str(annotations), "--val-videos", "1",
                                 "-o", str(tmp_path)])
    assert result.exit_code == 3 and "annotations[0] (id 1) has no video_id" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
