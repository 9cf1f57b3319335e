"""JSON outputs: RLE, format parsing, YouTube-VIS results, COCO instances, JSON lines."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from outputs_synthetic import (
    CATEGORY_IDS,
    CLASS_NAMES,
    HEIGHT,
    NUM_FRAMES,
    PLAN,
    WIDTH,
    make_instances,
    make_meta,
    make_records,
)
from vppcli.errors import UsageError
from vppcli.outputs import (
    FORMATS,
    CocoWriter,
    JsonlWriter,
    YtvisCollector,
    YtvisWriter,
    finish_and_commit,
    open_writers,
    parse_formats,
)
from vppcli.outputs import records
from vppcli.outputs.rle import decode_rle, encode_masks
from vppcli.results import FrameInstances

# pycocotools 2.0.x with NumPy 2 warns inside its own decode; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def plan_masks(position: int) -> dict[int, np.ndarray]:
    """Track id -> the mask the synthetic frame was given."""
    masks = make_instances(position).masks.numpy()
    return {row[0]: masks[k] for k, row in enumerate(PLAN[position])}


@pytest.mark.parametrize("size", [(48, 64), (47, 63), (1, 1)])
def test_rle_round_trips(size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(3, *size, generator=generator) > 0.5
    masks[2] = False
    encoded = encode_masks(masks)
    assert [rle["size"] for rle in encoded] == [list(size)] * 3
    assert all(isinstance(rle["counts"], str) for rle in encoded)
    for rle, mask in zip(encoded, masks):
        np.testing.assert_array_equal(decode_rle(rle), mask.numpy())
    assert encode_masks(torch.zeros(0, *size, dtype=torch.bool)) == []


def test_parse_formats_accepts_repeats_and_commas() -> None:
    assert parse_formats(["overlay,ytvis", "png", "ytvis", " JSONL "]) == ("overlay", "ytvis", "png", "jsonl")
    assert parse_formats([]) == ()
    with pytest.raises(UsageError, match=r"'mp5'.*overlay, ytvis, coco, png, jsonl"):
        parse_formats(["overlay,mp5"])
    assert FORMATS == ("overlay", "ytvis", "coco", "png", "jsonl")


def collect() -> list[dict]:
    collector = YtvisCollector(video_id=4, category_ids=CATEGORY_IDS)
    for position in range(NUM_FRAMES):
        collector.add(make_instances(position))
    results = collector.results()
    collector.close()
    return results


def test_ytvis_one_entry_per_track_with_nulls_mean_score_and_majority_category() -> None:
    results = collect()
    # first appearance order; track 2 has labels 1, 1, 0, 1 -> dog; track 1 has 0, 0, 1, 0, 0 -> cat
    assert [(entry["video_id"], entry["category_id"]) for entry in results] == [(4, 3), (4, 7), (4, 11)]
    expected_scores = [np.mean([0.9, 0.8, 0.7, 0.6, 0.5]), np.mean([0.8, 0.7, 0.6, 0.9]), np.mean([0.95, 0.4])]
    assert [entry["score"] for entry in results] == pytest.approx(expected_scores, abs=1e-6)
    present = {1: {0, 1, 2, 3, 5}, 2: {0, 1, 3, 5}, 3: {3, 5}}
    for track_id, entry in zip((1, 2, 3), results):
        segmentations = entry["segmentations"]
        assert len(segmentations) == NUM_FRAMES
        for position, rle in enumerate(segmentations):
            if position not in present[track_id]:
                assert rle is None
                continue
            assert rle["size"] == [HEIGHT, WIDTH] and isinstance(rle["counts"], str)
            np.testing.assert_array_equal(decode_rle(rle), plan_masks(position)[track_id])


def test_ytvis_results_work_with_pycocotools(tmp_path: Path) -> None:
    path = tmp_path / "ytvis.json"
    writer = YtvisWriter(make_meta(), path)
    for record in make_records():
        writer.write_frame(record)
    assert finish_and_commit([writer]) == [path]
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(collect()))
    # Video IoU of each track with a ground truth made from the same masks, via pycocotools.
    for track_id, entry in zip((1, 2, 3), loaded):
        intersection = union = 0.0
        for position, rle in enumerate(entry["segmentations"]):
            truth = plan_masks(position).get(track_id)
            truth_rle = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8))) if truth is not None else None
            if rle is None or truth_rle is None:
                assert rle is None and truth_rle is None
                continue
            area = float(mask_utils.area(rle))
            assert area == float(truth.sum())
            intersection += mask_utils.iou([rle], [truth_rle], [0])[0, 0] * area
            union += area
        assert intersection == pytest.approx(union)


def test_ytvis_collector_keeps_masks_out_of_memory() -> None:
    height, width, frames = 120, 160, 20
    generator = torch.Generator().manual_seed(1)
    collector = YtvisCollector(video_id=1, category_ids=(1,))
    rle_bytes = 0
    tracemalloc.start()
    try:
        for position in range(frames):
            # noise masks: thousands of runs each, so kept strings would show
            masks = torch.rand(2, height, width, generator=generator) > 0.5
            instances = FrameInstances(
                position, torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([0.5, 0.6]), masks,
                torch.zeros(2, 4),
            )
            collector.add(instances)
            rle_bytes += sum(len(rle["counts"]) for rle in encode_masks(masks))
            if position == 1:
                baseline = tracemalloc.get_traced_memory()[0]
        growth = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert rle_bytes > 200_000
    assert growth < rle_bytes / 10
    results = collector.results()
    collector.close()
    assert [len(entry["segmentations"]) for entry in results] == [frames, frames]


def test_coco_images_annotations_and_categories_are_consistent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "coco.json"
    writer = CocoWriter(make_meta(), path)
    records = make_records()
    for record in records:
        writer.write_frame(record)
    assert finish_and_commit([writer]) == [path]
    data = json.loads(path.read_text())
    assert data["info"]["video"] == "clip"
    assert data["categories"] == [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    assert [image["id"] for image in data["images"]] == list(range(1, NUM_FRAMES + 1))
    for image, record in zip(data["images"], records):
        assert image["file_name"] == f"clip/{record.index:06d}.jpg"
        assert (image["frame_index"], image["timestamp"]) == (record.index, pytest.approx(record.timestamp))
        assert (image["height"], image["width"], image["video_id"]) == (HEIGHT, WIDTH, 4)
    annotations = data["annotations"]
    assert [a["id"] for a in annotations] == list(range(1, sum(map(len, PLAN)) + 1))
    assert [(a["image_id"], a["track_id"]) for a in annotations] == [
        (position + 1, row[0]) for position, rows in enumerate(PLAN) for row in rows
    ]
    rows = [row for frame in PLAN for row in frame]
    coco = COCO(str(path))  # pycocotools loads it and indexes it
    for annotation, (_, label, score, *_) in zip(annotations, rows):
        mask = decode_rle(annotation["segmentation"])
        np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), mask)
        np.testing.assert_array_equal(mask, plan_masks(annotation["image_id"] - 1)[annotation["track_id"]])
        ys, xs = np.nonzero(mask)
        x, y = xs.min(), ys.min()
        assert annotation["bbox"] == [x, y, xs.max() + 1 - x, ys.max() + 1 - y]
        assert annotation["area"] == mask.sum() == mask_utils.area(annotation["segmentation"])
        assert annotation["category_id"] == CATEGORY_IDS[label]
        assert annotation["score"] == pytest.approx(score, abs=1e-6)
        assert annotation["iscrowd"] == 0
    assert len(coco.getAnnIds(imgIds=[5])) == 0  # the empty frame is an image without annotations


class FlushRecorder(io.StringIO):
    """Remembers what had been written at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        super().flush()
        self.flushed.append(self.getvalue())


def test_jsonl_writes_one_flushed_line_per_frame(tmp_path: Path) -> None:
    stream = FlushRecorder()
    writer = JsonlWriter(make_meta(), stream)
    records = make_records()
    for record in records:
        writer.write_frame(record)
    assert finish_and_commit([writer]) == []
    assert list(tmp_path.iterdir()) == []
    assert [text.count("\n") for text in stream.flushed] == list(range(1, NUM_FRAMES + 1))
    assert all(text.endswith("\n") for text in stream.flushed)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    for position, (line, record) in enumerate(zip(lines, records)):
        assert (line["video"], line["frame"], line["timestamp"]) == ("clip", record.index, record.timestamp)
        assert [i["id"] for i in line["instances"]] == [row[0] for row in PLAN[position]]
        for instance, (track_id, label, score, top, left, side) in zip(line["instances"], PLAN[position]):
            assert instance["class"] == CLASS_NAMES[label] and instance["category_id"] == CATEGORY_IDS[label]
            assert instance["score"] == pytest.approx(score, abs=1e-6)
            assert instance["bbox"] == [left, top, side, side] and instance["area"] == side * side
            assert instance["rle"]["size"] == [HEIGHT, WIDTH]
            np.testing.assert_array_equal(decode_rle(instance["rle"]), plan_masks(position)[track_id])


def test_the_json_writers_of_a_video_encode_each_frame_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting_encode(masks: torch.Tensor) -> list:
        calls.append(len(masks))
        return encode_masks(masks)

    monkeypatch.setattr(records, "encode_masks", counting_encode)
    writers = open_writers(("ytvis", "coco", "jsonl"), make_meta(), tmp_path, io.StringIO())
    frames = make_records()
    for record in frames:
        for writer in writers:
            writer.write_frame(record)
    finish_and_commit(writers)
    assert calls == [len(record.instances) for record in frames]
    # the frames, not the module, hold the records: they go when the frames go
    assert all("instance_records" in vars(record) for record in frames)
