"""RoVIS tracker: track queries, mask NMS and the per-video track memory.

Re-implements the reference's `TrackFormerTracker` with `idol_nms=True` on top of mmtrack's
`BaseTracker` memory (reference-architecture.md, 1.3 and 3.6), with every piece of per-video
state in an explicit `TrackerState`, and the YouTube-VIS video-level aggregation (3.7) as a
streaming `TrackAccumulator`.

Behaviour pinned down from the reference code where the spec is silent:
* Tracker order (the order of track queries and of `query_index - num_static`) is the insertion
  order of the track memory: a track keeps its slot while it lives and new tracks are appended.
  New ids are assigned in ascending order, so tracker order is also ascending id order.
* Ids of new detections are drawn from the counter *before* the second NMS: a suppressed new
  detection still uses up its id, so the ids of one video can have gaps.
* A track query that appears twice (same query, two labels) yields two detections with the same
  mask; the first NMS (IoU 1 > 0.7) keeps only the higher-scored one.
* Mask IoU is (intersection + 1e-6) / (union + 1e-6) in float32, so two empty masks have IoU 1.
* NMS walks the detections in the given order, not re-sorted: continued tracks first (by score),
  then new ones (by score). Continued tracks are never suppressed in the second NMS.
* A frame without detections leaves the memory untouched: nothing is updated and no track is
  removed in that frame, so retained tracks keep feeding their queries.
* Removal happens after the memory update of a frame with detections: a track last seen at
  frame f is dropped at the first such frame t with t - f >= num_frames_retain.
* The memory keeps only the latest value per track (the reference appends every frame's value
  to per-track lists but only ever reads the last one) and no masks (never read back).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from vppcli.config import TrackerConfig
from vppcli.model.postprocess import Detections
from vppcli.results import FrameInstances, TrackSummary

# The reference counts from 0; we count from 1 so that 0 can mean background in PNG masks.
FIRST_TRACK_ID = 1

# Pixels per chunk of the IoU matmul: float32 sums of 0/1 values are exact below 2**24.
_IOU_CHUNK_ELEMENTS = 1 << 24


@dataclass
class Track:
    """One live track in the memory.

    embedding: [C] the decoder query (before post_norm) fed back as this track's query.
    box: [4] float32 (x0, y0, x1, y1) of the last kept detection.
    """

    track_id: int
    embedding: Tensor
    label: int
    score: float
    box: Tensor
    last_frame: int


@dataclass
class TrackerState:
    """Per-video tracker state: the id counter and the live tracks in tracker order.

    `tracks` maps id -> `Track` and relies on dict insertion order: re-assigning an existing id
    keeps its position, a new id goes to the end. Its size is bounded by the number of live
    tracks, never by the number of frames.
    """

    next_id: int = FIRST_TRACK_ID
    tracks: dict[int, Track] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget every track and restart ids (first frame of a video)."""
        self.next_id = FIRST_TRACK_ID
        self.tracks.clear()

    def num_bytes(self) -> int:
        """Bytes held by the tensors of the memory."""
        return sum(
            t.embedding.numel() * t.embedding.element_size() + t.box.numel() * t.box.element_size()
            for t in self.tracks.values()
        )


def track_queries(state: TrackerState) -> tuple[Tensor | None, list[int]]:
    """Queries of all retained tracks, to append to the next frame's static queries.

    Returns:
        embeddings: [K, C] in tracker order, or None when there is no track.
        ids: the K track ids in the same order.
    """
    if not state.tracks:
        return None, []
    ids = list(state.tracks)
    return torch.stack([state.tracks[i].embedding for i in ids]), ids


def update(
    state: TrackerState,
    detections: Detections,
    query_features: Tensor,
    frame_index: int,
    config: TrackerConfig,
) -> FrameInstances:
    """Continue and start tracks from one frame's detections and update the memory in place.

    Args:
        state: the video's tracker state; its track order must be the one `track_queries`
            returned for this frame's decoder input.
        detections: confident detections sorted by descending score; `num_static_queries` says
            which query indices are track queries.
        query_features: [Q + K, C] final decoder queries before post_norm, one row per query.
        frame_index: 0-based index of the frame in the video.
        config: NMS, query-update and retention settings.

    Returns:
        The kept instances: continued tracks (by score), then new tracks (by score), with their
        track ids.
    """
    height, width = detections.image_size
    if len(detections) == 0:
        return FrameInstances.empty(frame_index, height, width, device=detections.masks.device)

    num_static = detections.num_static_queries
    order = list(state.tracks)
    query = detections.query_indices
    if int(query.max()) >= num_static + len(order):
        raise ValueError(
            f"query index {int(query.max())} but only {num_static} static and "
            f"{len(order)} track queries"
        )
    is_continued = query >= num_static

    # Both NMS passes look at subsets of the same detections: one IoU matrix serves both.
    iou = mask_iou(detections.masks, detections.masks)
    continued = is_continued.nonzero(as_tuple=True)[0]
    continued = continued[_greedy_nms(iou[continued][:, continued], config.track_nms_iou)]
    continued_ids = [order[k] for k in (query[continued] - num_static).tolist()]

    new = (~is_continued).nonzero(as_tuple=True)[0]
    new_ids = list(range(state.next_id, state.next_id + len(new)))
    state.next_id += len(new)

    candidates = torch.cat([continued, new])
    keep = _greedy_nms(iou[candidates][:, candidates], config.new_nms_iou, len(continued))
    kept_ids = [i for i, k in zip(continued_ids + new_ids, keep.tolist()) if k]
    rows = candidates[keep]

    labels = detections.labels[rows]
    scores = detections.scores[rows]
    boxes = detections.boxes[rows]
    embeddings = query_features.index_select(0, query[rows]).detach()
    # float32 comparison, as in the reference, so the threshold is rounded the same way.
    weak = (scores < config.query_update_threshold).tolist()
    rows_info = zip(kept_ids, labels.tolist(), scores.tolist())
    for slot, (track_id, label, score) in enumerate(rows_info):
        previous = state.tracks.get(track_id)
        # A weak continuation would feed a poor query forward: keep the query that found it.
        if previous is not None and weak[slot]:
            embedding = previous.embedding
        else:
            embedding = embeddings[slot].clone()
        state.tracks[track_id] = Track(
            track_id, embedding, label, score, boxes[slot].clone(), frame_index
        )
    _drop_stale(state, frame_index, config.num_frames_retain)

    return FrameInstances(
        frame_index=frame_index,
        track_ids=torch.tensor(kept_ids, dtype=torch.int64, device=query.device),
        labels=labels,
        scores=scores,
        masks=detections.masks[rows],
        boxes=boxes,
    )


def _drop_stale(state: TrackerState, frame_index: int, num_frames_retain: int) -> None:
    stale = [i for i, t in state.tracks.items() if frame_index - t.last_frame >= num_frames_retain]
    for track_id in stale:
        del state.tracks[track_id]


def mask_iou(masks_a: Tensor, masks_b: Tensor) -> Tensor:
    """Pairwise IoU of boolean masks, as the reference's IDOL `mask_iou`.

    Args:
        masks_a: [N, H, W] bool.
        masks_b: [M, H, W] bool.

    Returns:
        [N, M] float32, (intersection + 1e-6) / (union + 1e-6); two empty masks give 1.
    """
    flat_a = masks_a.flatten(1)
    flat_b = masks_b.flatten(1)
    num_pixels = flat_a.shape[1]
    same = masks_b is masks_a
    rows = max(1, flat_a.shape[0] + (0 if same else flat_b.shape[0]))
    chunk = max(1, min(_IOU_CHUNK_ELEMENTS, _IOU_CHUNK_ELEMENTS // rows))
    inter = torch.zeros(flat_a.shape[0], flat_b.shape[0], dtype=torch.int64, device=flat_a.device)
    # Counts are integers below 2**24 inside a chunk, so the float32 matmul is exact (0/1 inputs
    # are exact under TF32 too, which only rounds the inputs).
    for start in range(0, num_pixels, chunk):
        part_a = flat_a[:, start:start + chunk].float()
        part_b = part_a if same else flat_b[:, start:start + chunk].float()
        inter += (part_a @ part_b.T).to(torch.int64)
    area_a = flat_a.sum(1)
    area_b = flat_b.sum(1)
    union = area_a[:, None] + area_b[None, :] - inter
    return (inter.float() + 1e-6) / (union.float() + 1e-6)


def mask_nms(masks: Tensor, iou_threshold: float, num_whitelisted: int = 0) -> Tensor:
    """Greedy class-agnostic mask NMS in the given order (the reference's IDOL `mask_nms`).

    Detection j is suppressed when an earlier, still kept detection i has IoU > threshold. The
    first `num_whitelisted` detections are never suppressed (but do suppress others).

    Args:
        masks: [N, H, W] bool, already in priority order.
        iou_threshold: suppress above this IoU (strict).
        num_whitelisted: number of leading detections that are always kept.

    Returns:
        [N] bool keep flags.
    """
    return _greedy_nms(mask_iou(masks, masks), iou_threshold, num_whitelisted)


def _greedy_nms(iou: Tensor, iou_threshold: float, num_whitelisted: int = 0) -> Tensor:
    """`mask_nms` on a precomputed [N, N] IoU matrix; returns [N] bool keep flags."""
    num = iou.shape[0]
    overlaps = (iou > iou_threshold).triu(diagonal=1)
    overlaps[:, :num_whitelisted] = False
    overlaps = overlaps.cpu()  # a short sequential loop: cheaper on the host
    keep = torch.ones(num, dtype=torch.bool)
    for i in range(num - 1):
        if keep[i]:
            keep &= ~overlaps[i]
    return keep.to(iou.device)


@dataclass
class _TrackStats:
    score_sum: float
    label_counts: dict[int, int]
    num_frames: int
    first_frame: int
    last_frame: int


class TrackAccumulator:
    """Streaming video-level aggregation of per-frame tracks (mmtrack `YouTubeVISMetric`).

    Keeps O(number of tracks x labels seen) numbers, not the frames. Scores are summed in float64;
    the reference takes a float32 numpy mean, which can differ in the last float32 bit.
    """

    def __init__(self) -> None:
        self._tracks: dict[int, _TrackStats] = {}

    def reset(self) -> None:
        self._tracks.clear()

    def add(self, frame: FrameInstances) -> None:
        """Count one frame's instances."""
        rows = zip(frame.track_ids.tolist(), frame.labels.tolist(), frame.scores.tolist())
        for track_id, label, score in rows:
            stats = self._tracks.get(track_id)
            if stats is None:
                stats = _TrackStats(0.0, {}, 0, frame.frame_index, frame.frame_index)
                self._tracks[track_id] = stats
            stats.score_sum += score
            stats.label_counts[label] = stats.label_counts.get(label, 0) + 1
            stats.num_frames += 1
            stats.first_frame = min(stats.first_frame, frame.frame_index)
            stats.last_frame = max(stats.last_frame, frame.frame_index)

    def summaries(self) -> list[TrackSummary]:
        """One summary per track id, in order of first appearance (as the reference emits them).

        score = mean per-frame score over the frames where the id appears; label = majority vote
        of the per-frame labels, ties going to the smaller label (numpy bincount + argmax).
        """
        out = []
        for track_id, stats in self._tracks.items():
            top = max(stats.label_counts.values())
            label = min(k for k, v in stats.label_counts.items() if v == top)
            out.append(
                TrackSummary(
                    track_id=track_id,
                    label=label,
                    score=stats.score_sum / stats.num_frames,
                    num_frames=stats.num_frames,
                    first_frame=stats.first_frame,
                    last_frame=stats.last_frame,
                )
            )
        return out
