"""The training data pipeline: a YouTube-VIS split with ground truth -> augmented clips.

`TrainingDataset.sample(index)` is a pure function of (seed, index): its randomness comes from
`np.random.default_rng([seed, index])` and nothing is cached or counted between calls. Resuming
at a step therefore reproduces the uninterrupted data stream without any data state in the
checkpoint, and ranks draw disjoint index streams (`ClipStream`).

Annotations are read and checked once, up front (one `InputError` line per problem), and kept
as compressed RLEs (about the size of the JSON); masks are decoded only for the frames of a
clip. Category ids map to contiguous labels 0..K-1 in ascending id order.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vppcli.config import PreprocessConfig
from vppcli.errors import InputError, UsageError
from vppcli.evaluation.dataset import Video, YtvisDataset, load_dataset
from vppcli.evaluation.metric import brief, checked_rle, is_integer, listing
from vppcli.training.clips import ClipConfig, choose_clip, choose_video
from vppcli.training.targets import ClipSample, FrameTargets
from vppcli.training.transforms import ClipTransform, draw_transform, transform_frame

log = logging.getLogger(__name__)

Rle = dict[str, Any]  # compressed: {"size": [h, w], "counts": bytes}


@dataclass(frozen=True)
class Track:
    """One annotated object: its annotation id, label, and compressed RLE per frame (None: absent)."""

    instance_id: int
    label: int
    masks: tuple[Rle | None, ...]


@dataclass(frozen=True)
class VideoRecord:
    """A video with its tracks and the frames where at least one object is visible."""

    video: Video
    tracks: tuple[Track, ...]
    visible: tuple[int, ...]


class TrainingDataset:
    """Clips of a YouTube-VIS split with ground truth.

    class_names / category_ids: label i is the dataset category `category_ids[i]` named
        `class_names[i]` (ascending id), ready for a model config.
    """

    def __init__(self, ytvis: YtvisDataset, clip: ClipConfig | None = None,
                 preprocess: PreprocessConfig | None = None, seed: int = 0) -> None:
        if seed < 0:
            raise UsageError(f"the data seed must be >= 0, got {seed}")
        self.clip = clip or ClipConfig()
        self.preprocess = preprocess or PreprocessConfig()
        self.seed = seed
        self.image_root, self.videos = _check_ground_truth(ytvis)
        self.class_names = tuple(c.name for c in ytvis.categories)
        self.category_ids = tuple(c.id for c in ytvis.categories)
        # [V + 1] cumulative lengths: a video is drawn with probability proportional to its length.
        self._frame_offsets = np.cumsum([0] + [r.video.length for r in self.videos])
        log.info("training data %s: %d videos, %d frames, %d objects, %d classes", ytvis.annotation_file,
                 len(self.videos), self.num_frames, sum(len(r.tracks) for r in self.videos), self.num_classes)

    @classmethod
    def from_files(cls, annotation_file: Path, image_root: Path, clip: ClipConfig | None = None,
                   preprocess: PreprocessConfig | None = None, seed: int = 0) -> TrainingDataset:
        return cls(load_dataset(annotation_file, image_root), clip, preprocess, seed)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_frames(self) -> int:
        return int(self._frame_offsets[-1])

    def sample(self, index: int) -> ClipSample:
        """Clip number `index` (>= 0) of this dataset's stream: the same index gives the same clip."""
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, index])
        record = self.videos[choose_video(rng, self._frame_offsets)]
        frames = choose_clip(rng, record.video.length, record.visible, self.clip)
        transform = draw_transform(rng, self.clip)
        images, targets = zip(*(self._frame(record, frame, transform) for frame in frames))
        return ClipSample(torch.stack(images), tuple(targets), record.video.id, frames)

    def _frame(self, record: VideoRecord, frame: int, transform: ClipTransform) -> tuple[Tensor, FrameTargets]:
        """image [3, Hp, Wp] and the targets of one frame of a clip."""
        video = record.video
        path = self.image_root / video.file_names[frame]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"cannot decode frame {path} (video {video.id})")
        if image.shape[:2] != (video.height, video.width):
            raise InputError(f"frame {path} is {image.shape[1]}x{image.shape[0]} but video {video.id} is "
                             f"{video.width}x{video.height}; its masks would not line up")
        present = [track for track in record.tracks if track.masks[frame] is not None]
        masks = _decode([track.masks[frame] for track in present], video)
        pixels, resized = transform_frame(image, masks, transform, self.preprocess)
        # Objects too small for the new size vanish from this frame only; their ids stay.
        kept = resized.flatten(1).any(1)
        labels = torch.tensor([track.label for track in present], dtype=torch.int64)
        ids = torch.tensor([track.instance_id for track in present], dtype=torch.int64)
        return pixels, FrameTargets(labels[kept], resized[kept], ids[kept])


class ClipStream:
    """Endless iterator over the clips of one process: position p (0, 1, ... counted per
    process, e.g. the micro-step) yields `dataset.sample(p * world_size + rank)`, so ranks never
    share a clip and a run resumed at `start` sees exactly the clips it would have seen.

    workers > 0 decodes ahead in a torch DataLoader (ordered, bounded prefetch); each sample is
    a pure function of its index, so the stream is identical with or without workers.
    """

    def __init__(self, dataset: TrainingDataset, start: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0, prefetch: int = 2) -> None:
        if start < 0 or world_size < 1 or not 0 <= rank < world_size or workers < 0 or prefetch < 1:
            raise UsageError(f"bad clip stream: start={start}, rank={rank}, world_size={world_size}, "
                             f"workers={workers}, prefetch={prefetch}")
        self.dataset, self.start, self.rank, self.world_size = dataset, start, rank, world_size
        self.workers, self.prefetch = workers, prefetch

    def index(self, position: int) -> int:
        return position * self.world_size + self.rank

    def __iter__(self) -> Iterator[ClipSample]:
        positions = itertools.count(self.start)
        if self.workers == 0:
            return (self.dataset.sample(self.index(p)) for p in positions)
        loader = DataLoader(
            _Indexed(self), batch_size=None, sampler=positions, num_workers=self.workers,
            prefetch_factor=self.prefetch, collate_fn=_identity, worker_init_fn=_single_threaded,
            # Forked workers hang in OpenCV's thread-pool teardown when the parent already used it.
            multiprocessing_context="spawn")
        return iter(loader)


class _Indexed(Dataset):
    """Position -> clip, for the DataLoader's workers."""

    def __init__(self, stream: ClipStream) -> None:
        self.stream = stream

    def __getitem__(self, position: int) -> ClipSample:
        return self.stream.dataset.sample(self.stream.index(position))


def _identity(sample: ClipSample) -> ClipSample:
    return sample


def _single_threaded(_worker: int) -> None:
    # The workers already run in parallel; thread pools inside each would oversubscribe the cores.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _decode(rles: Sequence[Rle], video: Video) -> np.ndarray:
    """[H, W, G] uint8 0/1 masks of one frame."""
    if not rles:
        return np.zeros((video.height, video.width, 0), dtype=np.uint8)
    return mask_utils.decode(list(rles))


def _check_ground_truth(ytvis: YtvisDataset) -> tuple[Path, tuple[VideoRecord, ...]]:
    """(frames directory, video records), or an InputError naming the first problem."""
    source = ytvis.annotation_file
    if not ytvis.videos:
        raise InputError(f"{source} has no videos")
    if not ytvis.has_ground_truth:
        raise InputError(f"{source} has no annotations: training needs ground truth (per-frame segmentations)")
    if ytvis.image_root is None:
        raise UsageError("no frames directory: pass --images DIR (or --data-root)")
    category_ids = [c.id for c in ytvis.categories]
    if len(set(category_ids)) != len(category_ids):
        raise InputError(f"{source}: duplicate category ids")
    labels = {category_id: label for label, category_id in enumerate(category_ids)}
    videos = {v.id: v for v in ytvis.videos}
    tracks: dict[int, list[Track]] = {v.id: [] for v in ytvis.videos}
    seen: set[int] = set()
    for position, ann in enumerate(ytvis.data["annotations"]):
        track = _track(ann, f"{source}: annotations[{position}]", videos, labels, seen)
        tracks[int(ann["video_id"])].append(track)
    ytvis.check_frames(ytvis.videos)
    return ytvis.image_root, tuple(VideoRecord(v, tuple(tracks[v.id]), _visible(v, tracks[v.id]))
                                   for v in ytvis.videos)


def _track(ann: Mapping[str, Any], where: str, videos: Mapping[int, Video], labels: Mapping[int, int],
           seen: set[int]) -> Track:
    """Check one annotation (load_dataset checked the types of video_id, category_id, segmentations)."""
    if not is_integer(ann.get("id")):
        raise InputError(f"{where}: id {brief(ann.get('id'))} is not an integer (training needs instance ids)")
    instance_id = int(ann["id"])
    where = f"{where} (id {instance_id})"
    if instance_id in seen:
        raise InputError(f"{where}: duplicate annotation id {instance_id}")
    seen.add(instance_id)
    video = videos.get(int(ann["video_id"]))
    if video is None:
        raise InputError(f"{where}: unknown video id {ann['video_id']}")
    category_id = int(ann["category_id"])
    if category_id not in labels:
        raise InputError(f"{where}: unknown category id {category_id} (categories: {listing(sorted(labels))})")
    segmentations = ann["segmentations"]
    if len(segmentations) != video.length:
        raise InputError(f"{where}: {len(segmentations)} segmentations but video {video.id} has "
                         f"{video.length} frames")
    masks = tuple(_segmentation(seg, video, f"{where}, frame {frame}") for frame, seg in enumerate(segmentations))
    return Track(instance_id, labels[category_id], masks)


def _segmentation(seg: Any, video: Video, where: str) -> Rle | None:
    """A compressed RLE of a frame's segmentation (RLE or polygons), None where the object is absent."""
    size = [video.height, video.width]
    if seg is None:
        return None
    if isinstance(seg, list):
        # Polygons with fewer than 3 points draw nothing (and upset pycocotools): dropped.
        polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        if any(not isinstance(p, list) for p in seg) or any(not _numbers(p) for p in polygons):
            raise InputError(f"{where}: bad polygon list {brief(seg)}")
        return _compressed(mask_utils.merge(mask_utils.frPyObjects(polygons, *size))) if polygons else None
    if not isinstance(seg, Mapping) or "counts" not in seg or "size" not in seg:
        raise InputError(f"{where}: expected an RLE, polygons or null, got {brief(seg)}")
    if seg["size"] != size:
        raise InputError(f"{where}: RLE size {brief(seg['size'])} differs from the video size {size} (height, width)")
    rle = _compressed(checked_rle(seg["counts"], size, where))
    if isinstance(seg["counts"], str) and not _runs_cover(rle["counts"], video.height * video.width):
        raise InputError(f"{where}: RLE counts {brief(seg['counts'])} do not cover {video.height}x{video.width} pixels")
    return rle


def _runs_cover(counts: bytes, pixels: int) -> bool:
    """Whether well-formed COCO compressed counts decode to non-negative runs summing to `pixels`.
    pycocotools' decoder trusts them: short runs leave uninitialised memory in the mask.

    Format: each number is little-endian 5-bit groups, one character each (value + 48), 0x20
    marks "more follows", 0x10 in the last group is the sign; from the fourth number on each is a
    delta to the number two places before (the encoder's choice: the first ones are absolute).
    """
    digits = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    last = (digits & 0x20) == 0
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    place = np.arange(digits.size) - np.repeat(starts, np.diff(np.append(starts, digits.size)))
    if place.max() >= 7:  # more than 35 bits: no frame has that many pixels
        return False
    values = np.add.reduceat((digits & 0x1F) << (5 * place), starts)
    ends = np.flatnonzero(last)
    values -= ((digits[ends] & 0x10) != 0) << (5 * (place[ends] + 1))
    runs = values.copy()
    runs[1::2], runs[2::2] = np.cumsum(values[1::2]), np.cumsum(values[2::2])
    return bool((runs >= 0).all()) and int(runs.sum()) == pixels


def _numbers(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _compressed(rle: Mapping[str, Any]) -> Rle:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _visible(video: Video, tracks: Sequence[Track]) -> tuple[int, ...]:
    """Frames where at least one object has a non-empty mask."""
    return tuple(frame for frame in range(video.length)
                 if any(t.masks[frame] is not None and mask_utils.area(t.masks[frame]) > 0 for t in tracks))
