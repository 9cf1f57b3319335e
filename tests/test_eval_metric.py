"""The YouTube-VIS video AP on hand-built cases whose scores are known (docs: ytvis-eval.md)."""

from __future__ import annotations

import json
import zipfile
from typing import Any

import numpy as np
import pytest

from tests.ytvis_fixture import build_fixture, compressed_rle, perfect_results, uncompressed_rle
from vppcli.errors import InputError
from vppcli.evaluation.metric import METRIC_NAMES, evaluate_results, load_results, video_iou

H, W = 40, 50


def box(y0: int, x0: int, h: int, w: int, height: int = H, width: int = W) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return mask


def gt_file(annotations: list[dict[str, Any]], videos: dict[int, int] | None = None, height: int = H,
            width: int = W) -> dict[str, Any]:
    """videos: id -> frames (default: video 1 with 3 frames)."""
    videos = videos or {1: 3}
    return {
        "videos": [{"id": i, "height": height, "width": width, "length": n,
                    "file_names": [f"v{i}/{t:05d}.jpg" for t in range(n)]} for i, n in videos.items()],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [dict(a, id=k + 1) for k, a in enumerate(annotations)],
    }


def gt(video: int, category: int, masks: list[np.ndarray | None], iscrowd: int = 0,
       areas: list[float | None] | None = None) -> dict[str, Any]:
    return {"video_id": video, "category_id": category, "iscrowd": iscrowd,
            "segmentations": [None if m is None else uncompressed_rle(m) for m in masks],
            "areas": areas if areas is not None else [None if m is None else float(m.sum()) for m in masks]}


def det(video: int, category: int, score: float, masks: list[np.ndarray | None]) -> dict[str, Any]:
    return {"video_id": video, "category_id": category, "score": score,
            "segmentations": [None if m is None else compressed_rle(m) for m in masks]}


OBJECT = [box(0, 0, 10, 10), box(2, 2, 10, 10), box(4, 4, 10, 10)]


def scores(annotations: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, float | None]:
    return dict(evaluate_results(annotations, results).metrics)


def test_perfect_predictions_score_one_on_the_fixture(tmp_path):
    fixture = build_fixture(tmp_path)
    result = evaluate_results(fixture.data, perfect_results(fixture.data))
    for name in ("AP", "AP50", "AP75", "AP_s", "AR1", "AR10", "AR100", "AR_s"):
        assert result.metrics[name] == pytest.approx(1.0), name
    assert result.metrics["AP_m"] is None and result.metrics["AP_l"] is None  # no object that large
    assert set(result.metrics) == set(METRIC_NAMES)
    assert result.per_category == pytest.approx({"person": 1.0, "car": 1.0, "dog": 1.0})
    assert (result.num_videos, result.num_ground_truth, result.num_results) == (3, 7, 7)


def test_missing_frame_lowers_the_video_iou():
    # The detection misses frame 2: IoU 200/300 = 2/3, a match at IoU 0.50..0.65 only (4 of 10).
    annotations = gt_file([gt(1, 1, OBJECT)])
    metrics = scores(annotations, [det(1, 1, 0.9, [OBJECT[0], OBJECT[1], None])])
    assert metrics["AP"] == pytest.approx(0.4)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == 0.0


def test_null_frames():
    # GT absent in frame 2 while the detection has a mask: that area joins the union only.
    annotations = gt_file([gt(1, 1, [OBJECT[0], OBJECT[1], None])])
    assert scores(annotations, [det(1, 1, 0.9, OBJECT)])["AP"] == pytest.approx(0.4)
    # A frame where both are null changes nothing.
    assert scores(annotations, [det(1, 1, 0.9, [OBJECT[0], OBJECT[1], None])])["AP"] == pytest.approx(1.0)


def test_wrong_class_scores_zero_and_unknown_categories_are_dropped():
    annotations = gt_file([gt(1, 1, OBJECT)])
    metrics = scores(annotations, [det(1, 2, 0.9, OBJECT)])
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0  # "dog" has no GT, so it is not averaged in
    assert evaluate_results(annotations, [det(1, 99, 0.9, OBJECT)]).num_results == 0


def test_duplicates_and_false_positives():
    annotations = gt_file([gt(1, 1, OBJECT)])
    # A lower-scored duplicate comes after full recall: AP stays 1.
    assert scores(annotations, [det(1, 1, 0.9, OBJECT), det(1, 1, 0.8, OBJECT)])["AP"] == pytest.approx(1.0)
    # A higher-scored false positive: precision 1/2 at full recall, interpolated over all points.
    wrong = [box(25, 30, 10, 10)] * 3
    assert scores(annotations, [det(1, 1, 0.95, wrong), det(1, 1, 0.9, OBJECT)])["AP"] == pytest.approx(0.5)
    # Low-scored false positives after the true positive do not matter.
    low = [det(1, 1, 0.01 * k, wrong) for k in range(1, 6)]
    assert scores(annotations, [det(1, 1, 0.9, OBJECT), *low])["AP"] == pytest.approx(1.0)


def test_crowd_ground_truth_uses_the_plain_video_iou_and_absorbs_detections():
    crowd_region = [box(20, 20, 20, 20)] * 3
    annotations = gt_file([gt(1, 1, OBJECT), gt(1, 1, crowd_region, iscrowd=1)])
    # Two detections on the crowd region: both matched to it, neither TP nor FP.
    on_crowd = [det(1, 1, 0.99, crowd_region), det(1, 1, 0.98, crowd_region)]
    assert scores(annotations, [*on_crowd, det(1, 1, 0.9, OBJECT)])["AP"] == pytest.approx(1.0)
    # A small detection inside the crowd: COCO's intersection-over-detection would match it (1.0);
    # the video IoU is 25/400, so it is a false positive ranked first: AP 0.5.
    inside = det(1, 1, 0.99, [box(22, 22, 5, 5)] * 3)
    assert scores(annotations, [inside, det(1, 1, 0.9, OBJECT)])["AP"] == pytest.approx(0.5)


def test_area_ranges_use_the_mean_annotated_area_with_inclusive_bounds():
    size = 400
    small, medium, large = (box(0, 0, side, side, size, size) for side in (50, 150, 300))
    annotations = gt_file([gt(1, 1, [small]), gt(1, 1, [medium]), gt(1, 1, [large])], {1: 1}, size, size)
    metrics = scores(annotations, [det(1, 1, 0.9, [small]), det(1, 1, 0.8, [large])])
    assert (metrics["AP_s"], metrics["AP_m"], metrics["AP_l"]) == pytest.approx((1.0, 0.0, 1.0))
    assert (metrics["AR_s"], metrics["AR_m"], metrics["AR_l"]) == pytest.approx((1.0, 0.0, 1.0))
    assert metrics["AP"] == pytest.approx(67 / 101)  # recall 2/3 at precision 1: points 0.00..0.66
    # The GT's range comes from its `areas` (mean over non-null, non-zero frames), not its masks;
    # exactly 128^2 is both small and medium.
    boundary = gt_file([gt(1, 1, [small, small, small], areas=[128.0**2, None, 0])], {1: 3}, size, size)
    metrics = scores(boundary, [det(1, 1, 0.9, [small] * 3)])
    assert metrics["AP_s"] == pytest.approx(1.0) and metrics["AP_m"] == pytest.approx(1.0)
    assert metrics["AP_l"] is None
    # An unmatched detection outside the range is ignored there, not counted as a false positive.
    only_small = gt_file([gt(1, 1, [small])], {1: 1}, size, size)
    metrics = scores(only_small, [det(1, 1, 0.95, [large]), det(1, 1, 0.9, [small])])
    assert metrics["AP_s"] == pytest.approx(1.0) and metrics["AP"] == pytest.approx(0.5)


@pytest.mark.parametrize(("false_positives", "ap"), [(99, 0.01), (100, 0.0)])
def test_at_most_100_detections_per_video_and_category(false_positives, ap):
    annotations = gt_file([gt(1, 1, OBJECT)])
    wrong = [box(25, 30, 10, 10)] * 3
    noise = [det(1, 1, 0.9 - 0.001 * k, wrong) for k in range(false_positives)]
    metrics = scores(annotations, [*noise, det(1, 1, 0.1, OBJECT)])
    assert metrics["AP"] == pytest.approx(ap)
    assert metrics["AR10"] == 0.0


def test_score_ties_across_videos_go_by_ascending_video_id():
    annotations = gt_file([gt(2, 1, OBJECT)], {1: 3, 2: 3})
    wrong = [box(25, 30, 10, 10)] * 3
    # Listed TP first, but video 1's false positive ranks first on the tie: precision 1/2.
    assert scores(annotations, [det(2, 1, 0.5, OBJECT), det(1, 1, 0.5, wrong)])["AP"] == pytest.approx(0.5)


def test_empty_results_score_zero_and_videos_can_be_restricted():
    annotations = gt_file([gt(1, 1, OBJECT), gt(2, 1, OBJECT)], {1: 3, 2: 3})
    assert scores(annotations, [])["AP"] == 0.0
    only_first = evaluate_results(annotations, [det(1, 1, 0.9, OBJECT), det(2, 1, 0.9, OBJECT[:2] + [None])],
                                  video_ids=[1])
    assert only_first.metrics["AP"] == pytest.approx(1.0) and only_first.num_results == 1


def test_results_for_unknown_videos_are_refused_naming_them():
    annotations = gt_file([gt(1, 1, OBJECT)])
    with pytest.raises(InputError, match="unknown video ids 5, 8"):
        evaluate_results(annotations, [det(8, 1, 0.9, OBJECT), det(5, 1, 0.9, OBJECT), det(1, 1, 0.9, OBJECT)])


@pytest.mark.parametrize(("segmentations", "message"), [
    ([None, None], "result 0 \\(video 1\\) has 2 segmentations, the video has 3 frames"),
    ([compressed_rle(box(0, 0, 5, 5, 20, 20)), None, None], "frame 0: expected an RLE of size \\[40, 50\\]"),
    ([None, {"size": [H, W], "counts": 5}, None], "frame 1: bad RLE counts 5"),
    ([None, None, {"size": [H, W], "counts": ["a"]}], "frame 2: bad RLE counts \\['a'\\]"),
    ([{"size": [H, W], "counts": [-1, H * W + 1]}, None, None], "frame 0: bad RLE counts"),
    ([{"size": [H, W], "counts": [5, 6]}, None, None], f"frame 0: bad RLE counts .* summing to {H}x{W} pixels"),
    # The last digit carries the continuation bit: pycocotools would read past the string's end.
    ([{"size": [H, W], "counts": "0o"}, None, None], "frame 0: bad RLE counts '0o'"),
])
def test_malformed_results_are_refused_naming_the_video(segmentations, message):
    annotations = gt_file([gt(1, 1, OBJECT)])
    result = {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": segmentations}
    with pytest.raises(InputError, match=message):
        evaluate_results(annotations, [result])


@pytest.mark.parametrize(("segmentation", "message"), [
    (5, "annotation 1 of video 1, frame 1: expected polygons or an RLE of size \\[40, 50\\], got 5"),
    ({"size": [H, W], "counts": [1, 2]}, "annotation 1 of video 1, frame 1: bad RLE counts \\[1, 2\\]"),
    (compressed_rle(box(0, 0, 5, 5, 20, 20)), "frame 1: expected polygons or an RLE of size \\[40, 50\\]"),
])
def test_malformed_ground_truth_masks_are_refused_naming_the_annotation(segmentation, message):
    annotations = gt_file([gt(1, 1, OBJECT)])
    annotations["annotations"][0]["segmentations"][1] = segmentation
    with pytest.raises(InputError, match=message):
        evaluate_results(annotations, [])


@pytest.mark.parametrize(("result", "message"), [
    ("not a dict", "result 0 is not an object"),
    ({"video_id": "1", "category_id": 1, "score": 0.5, "segmentations": []}, "video_id '1' is not an integer"),
    ({"video_id": 1, "category_id": True, "score": 0.5, "segmentations": []}, "category_id True is not an integer"),
    ({"video_id": 1, "category_id": 1, "segmentations": [None] * 3}, "result 0 lacks score"),
    ({"video_id": 1, "category_id": 1, "score": "high", "segmentations": [None] * 3}, "score 'high' is not a number"),
])
def test_results_with_bad_fields_are_refused(result, message):
    with pytest.raises(InputError, match=message):
        evaluate_results(gt_file([gt(1, 1, OBJECT)]), [result])


def test_load_results_reads_json_and_zip_and_refuses_the_rest(tmp_path):
    entries = [det(1, 1, 0.9, OBJECT)]
    (tmp_path / "results.json").write_text(json.dumps(entries))
    with zipfile.ZipFile(tmp_path / "results.zip", "w") as archive:
        archive.write(tmp_path / "results.json", arcname="results.json")
    assert load_results(tmp_path / "results.json") == load_results(tmp_path / "results.zip") == entries
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(InputError, match="must be a JSON list"):
        load_results(tmp_path / "dict.json")
    with pytest.raises(InputError, match="no such results file"):
        load_results(tmp_path / "absent.json")
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_results(tmp_path / "bad.zip")


def test_uncompressed_result_rles_are_accepted():
    annotations = gt_file([gt(1, 1, OBJECT)])
    result = {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [uncompressed_rle(m) for m in OBJECT]}
    assert scores(annotations, [result])["AP"] == pytest.approx(1.0)


def test_video_iou_matches_its_definition_on_random_masks():
    from vppcli.evaluation.metric import _detection, _ground_truth

    rng = np.random.default_rng(1)
    frames = 4
    annotations = gt_file([], {1: frames})
    video = annotations["videos"][0]

    def random_masks() -> list[np.ndarray | None]:
        return [None if rng.random() < 0.25 else rng.random((H, W)) < rng.uniform(0.05, 0.6) for _ in range(frames)]

    dt_masks = [random_masks() for _ in range(5)]
    gt_masks = [random_masks() for _ in range(3)]
    dts = [_detection(det(1, 1, 0.5, m), k, {1: video}) for k, m in enumerate(dt_masks)]
    gts = [_ground_truth(gt(1, 1, m), video) for m in gt_masks]
    expected = np.zeros((5, 3))
    for i, d in enumerate(dt_masks):
        for j, g in enumerate(gt_masks):
            inter = sum(int((a & b).sum()) for a, b in zip(d, g) if a is not None and b is not None)
            union = sum(int((a | b).sum()) if a is not None and b is not None
                        else int((a if a is not None else b).sum()) if (a is not None or b is not None) else 0
                        for a, b in zip(d, g))
            expected[i, j] = inter / union if union else 0.0
    np.testing.assert_array_equal(video_iou(dts, gts), expected)
