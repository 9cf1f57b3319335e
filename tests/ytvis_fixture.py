"""A tiny YouTube-VIS-format dataset, generated on the fly: a few short videos of moving shapes
with their masks, in the detectron2 or the mmtrack layout (nothing is downloaded)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils

Layout = Literal["detectron2", "mmtrack"]
CATEGORIES = ({"id": 1, "name": "person", "supercategory": "object"},
              {"id": 2, "name": "car", "supercategory": "object"},
              {"id": 4, "name": "dog", "supercategory": "object"})
# (video id, frames); ids are not contiguous and not in file order on purpose.
VIDEOS = ((7, 5), (3, 4), (12, 6))
HEIGHT, WIDTH = 64, 96


@dataclass(frozen=True)
class Fixture:
    root: Path  # pass as --data-root
    annotation_file: Path
    images: Path  # the split's JPEGImages directory
    data: dict[str, Any]  # the annotation JSON


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """Column-major run lengths starting with a run of zeros, as YouTube-VIS ground truth stores them."""
    flat = mask.astype(np.uint8).flatten(order="F")
    boundaries = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(boundaries).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def perfect_results(data: dict[str, Any], score: float = 0.9) -> list[dict[str, Any]]:
    """Results equal to the ground truth (compressed RLE strings, null where absent)."""
    results = []
    for ann in data["annotations"]:
        video = next(v for v in data["videos"] if v["id"] == ann["video_id"])
        h, w = video["height"], video["width"]
        segmentations = [
            None if seg is None else compressed_rle(mask_utils.decode(mask_utils.frPyObjects(seg, h, w)))
            for seg in ann["segmentations"]
        ]
        results.append({"video_id": ann["video_id"], "category_id": ann["category_id"], "score": score,
                        "segmentations": segmentations})
    return results


def build_fixture(root: Path, layout: Layout = "detectron2", split: str = "train", year: str = "2021",
                  ground_truth: bool = True) -> Fixture:
    """Write the dataset under `root`; `ground_truth=False` gives an official-valid-like file
    (videos and categories only)."""
    base = root / (f"ytvis_{year}" if layout == "detectron2" else f"youtube_vis_{year}")
    images = base / split / "JPEGImages"
    annotation_file = (base / f"{split}.json" if layout == "detectron2"
                       else base / "annotations" / f"youtube_vis_{year}_{split}.json")
    rng = np.random.default_rng(0)
    videos, annotations = [], []
    for number, (video_id, length) in enumerate(VIDEOS):
        name = f"video_{number}"
        (images / name).mkdir(parents=True, exist_ok=True)
        background = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        objects = _objects(number)
        masks: list[list[np.ndarray | None]] = [[] for _ in objects]
        file_names = []
        for t in range(length):
            frame = background.copy()
            for k, (category_id, colour, x0, y0, size, appears) in enumerate(objects):
                if t < appears:
                    masks[k].append(None)
                    continue
                mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
                x = x0 + 5 * t
                mask[y0 : y0 + size, x : x + size] = True
                frame[mask] = colour
                masks[k].append(mask)
            file_name = f"{name}/{5 * t:05d}.jpg"
            cv2.imwrite(str(images / file_name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            file_names.append(file_name)
        videos.append({"id": video_id, "width": WIDTH, "height": HEIGHT, "length": length,
                       "file_names": file_names})
        for k, (category_id, *_rest) in enumerate(objects):
            annotations.append({
                "id": len(annotations) + 1, "video_id": video_id, "category_id": category_id, "iscrowd": 0,
                "segmentations": [None if m is None else uncompressed_rle(m) for m in masks[k]],
                "areas": [None if m is None else float(m.sum()) for m in masks[k]],
                "bboxes": [None if m is None else _bbox(m) for m in masks[k]],
            })
    data: dict[str, Any] = {"info": {"description": "vppcli test fixture"}, "videos": videos,
                            "categories": [dict(c) for c in CATEGORIES]}
    if ground_truth:
        data["annotations"] = annotations
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(data))
    return Fixture(root, annotation_file, images, data)


def _objects(number: int) -> list[tuple[int, tuple[int, int, int], int, int, int, int]]:
    """(category id, colour, x0, y0, size, first frame) of each object of video `number`."""
    objects = [(1, (240, 40, 40), 4, 8, 20, 0), (2, (40, 220, 60), 50, 30, 16, 1)]
    if number == 2:
        objects.append((4, (40, 60, 230), 10, 40, 12, 2))
    return objects


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
