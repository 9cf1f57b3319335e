"""The YouTube-VIS video AP, on PyPI pycocotools (docs: shared/docs/ytvis-eval.md).

COCO's evaluation loop (greedy matching per video and category, 101-point interpolated precision)
is reused unchanged through `COCOeval`; what differs for videos is supplied here: the IoU is taken
over the whole video, areas are means over the frames where an object is present, and the area
ranges are YouTube-VIS's (128^2 and 256^2 instead of COCO's 32^2 and 96^2).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import zipfile
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from vppcli.errors import InputError

AREA_RANGES: tuple[tuple[str, tuple[float, float]], ...] = (
    ("all", (0.0, 1e5**2)),
    ("small", (0.0, 128.0**2)),
    ("medium", (128.0**2, 256.0**2)),
    ("large", (256.0**2, 1e5**2)),
)
MAX_DETECTIONS = (1, 10, 100)
# (name, is_precision, IoU threshold or None for the mean over 0.50:0.95, area, max detections)
SUMMARY: tuple[tuple[str, bool, float | None, str, int], ...] = (
    ("AP", True, None, "all", 100),
    ("AP50", True, 0.5, "all", 100),
    ("AP75", True, 0.75, "all", 100),
    ("AP_s", True, None, "small", 100),
    ("AP_m", True, None, "medium", 100),
    ("AP_l", True, None, "large", 100),
    ("AR1", False, None, "all", 1),
    ("AR10", False, None, "all", 10),
    ("AR100", False, None, "all", 100),
    ("AR_s", False, None, "small", 100),
    ("AR_m", False, None, "medium", 100),
    ("AR_l", False, None, "large", 100),
)
METRIC_NAMES: tuple[str, ...] = tuple(row[0] for row in SUMMARY)
_MAX_NAMED = 10
# COCO's compressed counts: 6-bit digits offset by '0'; the last digit of a number (so of the
# string) lacks the continuation bit (0x20), else pycocotools' decoder reads past the end.
_COMPRESSED_COUNTS = re.compile("[0-o]*[0-O]")


@dataclass(frozen=True)
class VideoAP:
    """Scores of one evaluation. A value is None where there is no ground truth to score against
    (the official code's -1), e.g. AP_l when no object is large.

    metrics: METRIC_NAMES -> value in [0, 1] or None.
    per_category: category name -> AP (IoU 0.50:0.95, all areas, 100 detections) or None.
    """

    metrics: Mapping[str, float | None]
    per_category: Mapping[str, float | None]
    num_videos: int
    num_ground_truth: int
    num_results: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics), "per_category": dict(self.per_category),
            "num_videos": self.num_videos, "num_ground_truth": self.num_ground_truth,
            "num_results": self.num_results,
        }


@dataclass
class _Track:
    """A ground truth or a detection in the shape `COCOeval.evaluateImg` reads (`id`, `area`,
    `iscrowd`, `ignore`, `score`), plus its per-frame RLEs (None: absent) and their areas."""

    id: int
    area: float
    iscrowd: int
    score: float
    masks: list[dict[str, Any] | None]
    mask_areas: list[int]

    def __getitem__(self, key: str) -> Any:
        # evaluateImg reads and writes fields dict-style; `ignore` is `iscrowd`, as in the official code.
        return self.iscrowd if key == "ignore" else getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)


def load_results(path: Path) -> list[Any]:
    """A results list from `results.json`, or from a zip holding it (as submitted to the server)."""
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n.endswith(".json")]
                if not members:
                    raise InputError(f"{path} holds no .json file")
                name = "results.json" if "results.json" in members else members[0]
                results = json.loads(archive.read(name).decode("utf-8"))
        else:
            results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no such results file: {path}") from None
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(results, list):
        raise InputError(f"{path}: results must be a JSON list of per-video instances")
    return results


def evaluate_results(annotations: Mapping[str, Any], results: Sequence[Any],
                     video_ids: Collection[int] | None = None) -> VideoAP:
    """Score YouTube-VIS `results` against the ground truth `annotations` (the parsed JSON).

    video_ids: score only these videos (default: every video of the annotation file); results
        for other videos of the file are left out, results naming videos it lacks are refused.
    Raises InputError for results that do not fit the annotation set (unknown video ids, a wrong
    number of frames, masks of the wrong size, missing fields).
    """
    videos = {int(v["id"]): v for v in annotations.get("videos", [])}
    categories = {int(c["id"]): str(c["name"]) for c in annotations.get("categories", [])}
    selected = sorted(videos if video_ids is None else set(video_ids))
    missing = [v for v in selected if v not in videos]
    if missing:
        raise InputError(f"video ids not in the annotation file: {listing(missing)}")
    if not isinstance(results, Sequence) or isinstance(results, (str, bytes)):
        raise InputError("results must be a JSON list of per-video instances")
    for position, result in enumerate(results):
        if not isinstance(result, Mapping):
            raise InputError(f"result {position} is not an object")
        for key in ("video_id", "category_id"):
            if not is_integer(result.get(key)):
                raise InputError(f"result {position}: {key} {result.get(key)!r} is not an integer")
    unknown = sorted({int(r["video_id"]) for r in results} - set(videos))
    if unknown:
        raise InputError(f"results do not correspond to the annotation set: unknown video ids {listing(unknown)}")

    chosen = set(selected)
    ground_truth: dict[tuple[int, int], list[_Track]] = defaultdict(list)
    for ann in annotations.get("annotations", []):
        try:
            video_id, category_id = int(ann["video_id"]), int(ann["category_id"])
            if video_id in chosen and category_id in categories:
                ground_truth[video_id, category_id].append(_ground_truth(ann, videos[video_id]))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"ground-truth annotation {ann.get('id')!r} is malformed ({error!r})") from None
    _number(ground_truth)

    detections: dict[tuple[int, int], list[_Track]] = defaultdict(list)
    for position, result in enumerate(results):
        track = _detection(result, position, videos)
        video_id, category_id = int(result["video_id"]), int(result["category_id"])
        if video_id in chosen and category_id in categories:
            detections[video_id, category_id].append(track)

    evaluator = _VideoEval(ground_truth, detections, selected, sorted(categories))
    quiet = io.StringIO()  # COCOeval narrates on stdout; library code must not print
    with contextlib.redirect_stdout(quiet):
        evaluator.evaluate()
        evaluator.accumulate()
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]
    metrics = {name: _summarise(precision if is_ap else recall, thr, area, dets, evaluator)
               for name, is_ap, thr, area, dets in SUMMARY}
    per_category = {
        categories[cat]: _mean_defined(precision[:, :, k, 0, -1]) for k, cat in enumerate(sorted(categories))
    }
    return VideoAP(metrics, per_category, len(selected),
                   sum(len(v) for v in ground_truth.values()), sum(len(v) for v in detections.values()))


class _VideoEval(COCOeval):
    """COCOeval over videos: `imgIds` are video ids and the IoU is the video IoU."""

    def __init__(self, ground_truth: dict[tuple[int, int], list[_Track]],
                 detections: dict[tuple[int, int], list[_Track]], video_ids: list[int],
                 category_ids: list[int]) -> None:
        super().__init__(iouType="segm")
        self.params.imgIds = video_ids
        self.params.catIds = category_ids
        self.params.maxDets = list(MAX_DETECTIONS)
        self.params.areaRng = [list(bounds) for _, bounds in AREA_RANGES]
        self.params.areaRngLbl = [name for name, _ in AREA_RANGES]
        self._video_gts = ground_truth
        self._video_dts = detections

    def _prepare(self) -> None:
        self._gts = defaultdict(list, {key: list(tracks) for key, tracks in self._video_gts.items()})
        self._dts = defaultdict(list, {key: list(tracks) for key, tracks in self._video_dts.items()})
        self.evalImgs = defaultdict(list)
        self.eval = {}

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:  # noqa: N802 (COCOeval's name)
        gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gts and not dts:
            return []
        order = np.argsort([-d.score for d in dts], kind="mergesort")
        dts = [dts[i] for i in order][: self.params.maxDets[-1]]
        return video_iou(dts, gts)


def video_iou(detections: Sequence[_Track], ground_truth: Sequence[_Track]) -> np.ndarray:
    """[D, G] IoU over whole videos: summed per-frame intersections over summed per-frame unions;
    a frame where only one of the pair has a mask adds its area to the union; 0 for an empty union."""
    inter = np.zeros((len(detections), len(ground_truth)))
    union = np.zeros_like(inter)
    if not detections or not ground_truth:
        return inter
    for frame in range(len(ground_truth[0].masks)):
        d_area = np.array([d.mask_areas[frame] for d in detections], dtype=np.float64)
        g_area = np.array([g.mask_areas[frame] for g in ground_truth], dtype=np.float64)
        union += d_area[:, None] + g_area[None, :]
        d_idx = [i for i, d in enumerate(detections) if d.masks[frame] is not None]
        g_idx = [j for j, g in enumerate(ground_truth) if g.masks[frame] is not None]
        if not d_idx or not g_idx:
            continue
        # With the crowd flag pycocotools returns |d & g| / |d|; times |d| this is the exact pixel
        # count (the rounding only undoes float error), and it skips disjoint boxes in C.
        over_d = mask_utils.iou([detections[i].masks[frame] for i in d_idx],
                                [ground_truth[j].masks[frame] for j in g_idx], [1] * len(g_idx))
        shared = np.rint(np.asarray(over_d) * d_area[d_idx][:, None])
        inter[np.ix_(d_idx, g_idx)] += shared
    union -= inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _ground_truth(ann: Mapping[str, Any], video: Mapping[str, Any]) -> _Track:
    height, width = int(video["height"]), int(video["width"])
    if len(ann["segmentations"]) != _video_length(video):
        raise InputError(f"annotation {ann.get('id')} of video {video['id']} has {len(ann['segmentations'])} "
                         f"segmentations, the video has {_video_length(video)} frames")
    where = f"annotation {ann.get('id')} of video {video['id']}"
    masks = [_gt_rle(seg, height, width, f"{where}, frame {frame}") if seg else None
             for frame, seg in enumerate(ann["segmentations"])]
    mask_areas = [int(mask_utils.area(m)) if m is not None else 0 for m in masks]
    # The official evaluator bins ground truth by its annotated `areas`, not by its masks.
    areas = [a for a in ann.get("areas", mask_areas) if a]
    crowd = int(bool(ann.get("iscrowd", 0)))
    return _Track(0, float(np.mean(areas)) if areas else 0.0, crowd, 0.0, masks, mask_areas)


def _number(ground_truth: dict[tuple[int, int], list[_Track]]) -> None:
    """Ids from 1: matching stores ids and reads 0 as unmatched, so file ids (which may be 0) are not used."""
    for number, track in enumerate((t for tracks in ground_truth.values() for t in tracks), start=1):
        track.id = number


def _gt_rle(segmentation: Any, height: int, width: int, where: str) -> dict[str, Any]:
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if not isinstance(segmentation, Mapping) or "counts" not in segmentation \
            or segmentation.get("size", [height, width]) != [height, width]:
        raise InputError(f"{where}: expected polygons or an RLE of size {[height, width]}, got {brief(segmentation)}")
    return checked_rle(segmentation["counts"], [height, width], where)


def checked_rle(counts: Any, size: list[int], where: str) -> dict[str, Any]:
    """A compressed RLE of `size` that pycocotools can read: its C code trusts the counts, so a
    string must be well formed and run lengths must cover the frame exactly."""
    if isinstance(counts, str):
        if _COMPRESSED_COUNTS.fullmatch(counts):
            return {"size": size, "counts": counts}
    elif isinstance(counts, list):
        try:
            runs = np.asarray(counts)  # integers only: bools, floats, strings and nesting change the dtype
        except ValueError:  # ragged nesting
            runs = np.asarray([], dtype=object)
        if runs.dtype.kind == "i" and runs.ndim == 1 and (runs >= 0).all() and runs.sum() == size[0] * size[1]:
            # Uncompressed run lengths (the usual ground-truth form) are converted rather than refused.
            return mask_utils.frPyObjects({"size": size, "counts": counts}, *size)
    raise InputError(f"{where}: bad RLE counts {brief(counts)} (expected a COCO RLE string, or run lengths "
                     f"summing to {size[0]}x{size[1]} pixels)")


def _detection(result: Mapping[str, Any], position: int, videos: Mapping[int, Mapping[str, Any]]) -> _Track:
    where = f"result {position}"
    absent = [key for key in ("score", "segmentations") if key not in result]
    if absent:
        raise InputError(f"{where} lacks {', '.join(absent)}")
    video = videos[int(result["video_id"])]
    where = f"{where} (video {result['video_id']})"
    length, size = _video_length(video), [int(video["height"]), int(video["width"])]
    segmentations = result["segmentations"]
    if not isinstance(segmentations, list) or len(segmentations) != length:
        count = len(segmentations) if isinstance(segmentations, list) else "no list of"
        raise InputError(f"{where} has {count} segmentations, the video has {length} frames")
    masks: list[dict[str, Any] | None] = []
    for frame, seg in enumerate(segmentations):
        if not seg:
            masks.append(None)
            continue
        if not isinstance(seg, Mapping) or "counts" not in seg or not isinstance(seg.get("size"), list) \
                or seg["size"] != size:
            raise InputError(f"{where}, frame {frame}: expected an RLE of size {size}, got {brief(seg)}")
        masks.append(checked_rle(seg["counts"], size, f"{where}, frame {frame}"))
    mask_areas = [int(mask_utils.area(m)) if m is not None else 0 for m in masks]
    present = [a for a in mask_areas if a]
    try:
        score = float(result["score"])
    except (TypeError, ValueError):
        raise InputError(f"{where}: score {result['score']!r} is not a number") from None
    return _Track(position + 1, float(np.mean(present)) if present else 0.0, 0, score, masks, mask_areas)


def is_integer(value: Any) -> bool:
    """JSON integers (also written as 5.0), not booleans or strings."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer()


def _video_length(video: Mapping[str, Any]) -> int:
    return len(video["file_names"]) if "file_names" in video else int(video["length"])


def _summarise(values: np.ndarray, iou_threshold: float | None, area: str, max_detections: int,
               evaluator: _VideoEval) -> float | None:
    """Mean of precision [T, R, K, A, M] or recall [T, K, A, M] at one area and detection limit."""
    params = evaluator.params
    if iou_threshold is not None:
        values = values[np.isclose(params.iouThrs, iou_threshold)]
    return _mean_defined(values[..., params.areaRngLbl.index(area), params.maxDets.index(max_detections)])


def _mean_defined(values: np.ndarray) -> float | None:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else None


def listing(items: Sequence[Any]) -> str:
    """The first few items, comma-separated, with a count of the rest."""
    shown = ", ".join(str(i) for i in items[:_MAX_NAMED])
    return shown + (f" and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else "")


def brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
