"""Tracker: ids across frames, NMS rules, query updates, retention, memory, video summaries."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from vppcli.config import TrackerConfig
from vppcli.model.postprocess import Detections, mask_boxes
from vppcli.model.tracker import (
    FIRST_TRACK_ID,
    TrackAccumulator,
    TrackerState,
    mask_iou,
    mask_nms,
    track_queries,
    update,
)
from vppcli.results import FrameInstances

NUM_STATIC = 10
SIZE = (40, 48)
DIM = 4
CONFIG = TrackerConfig()


def square(y: int, x: int, side: int = 10) -> Tensor:
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[y : y + side, x : x + side] = True
    return mask


def detections(*items: tuple[int, int, float, Tensor]) -> Detections:
    """Detections from (query index, label, score, mask), sorted by score as the head does."""
    items = tuple(sorted(items, key=lambda item: -item[2]))
    masks = torch.stack([m for *_, m in items]) if items else torch.zeros(0, *SIZE, dtype=torch.bool)
    return Detections(
        query_indices=torch.tensor([q for q, *_ in items], dtype=torch.int64),
        labels=torch.tensor([lab for _, lab, *_ in items], dtype=torch.int64),
        scores=torch.tensor([s for _, _, s, _ in items], dtype=torch.float32),
        masks=masks,
        boxes=mask_boxes(masks),
        num_static_queries=NUM_STATIC,
    )


def features(frame: int, num_tracks: int) -> Tensor:
    """[NUM_STATIC + K, DIM] query features whose rows say which frame and query they are."""
    rows = torch.arange(NUM_STATIC + num_tracks, dtype=torch.float32)[:, None]
    return (100.0 * frame + rows).repeat(1, DIM)


def step(
    state: TrackerState, frame: int, *items: tuple[int, int, float, Tensor], config: TrackerConfig = CONFIG
) -> FrameInstances:
    num_tracks = len(track_queries(state)[1])
    return update(state, detections(*items), features(frame, num_tracks), frame, config)


def test_persistent_object_keeps_its_id_and_new_object_gets_a_new_one() -> None:
    state = TrackerState()
    out = step(state, 0, (3, 7, 0.9, square(2, 2)))
    assert out.track_ids.tolist() == [1]
    assert out.labels.tolist() == [7]
    assert out.boxes.tolist() == [[2, 2, 12, 12]]
    queries, ids = track_queries(state)
    assert ids == [1]
    assert torch.equal(queries, features(0, 0)[3:4])

    # Frame 1: the square moved and is found by the query of track 1; a second object appears.
    out = step(state, 1, (NUM_STATIC + 0, 7, 0.8, square(4, 5)), (2, 1, 0.6, square(25, 30)))
    assert out.track_ids.tolist() == [1, 2]
    assert out.frame_index == 1
    assert torch.equal(out.masks[0], square(4, 5))
    queries, ids = track_queries(state)
    assert ids == [1, 2]
    assert torch.equal(queries[0], features(1, 1)[NUM_STATIC])  # updated embedding
    assert torch.equal(queries[1], features(1, 1)[2])
    assert state.tracks[1].last_frame == 1 and state.tracks[1].box.tolist() == [5, 4, 15, 14]


def test_new_duplicate_of_an_existing_track_is_suppressed_never_the_track() -> None:
    state = TrackerState()
    step(state, 0, (0, 0, 0.9, square(5, 5)))
    # IoU(square(5, 5), square(6, 6)) = 81 / 119 > 0.4; the new one even scores higher.
    out = step(state, 1, (NUM_STATIC, 0, 0.5, square(5, 5)), (4, 0, 0.95, square(6, 6)))
    assert out.track_ids.tolist() == [1]
    assert out.scores.tolist() == [0.5]
    assert list(state.tracks) == [1]
    # The suppressed detection used up id 2: ids are drawn before the NMS, as in the reference.
    out = step(state, 2, (NUM_STATIC, 0, 0.9, square(5, 5)), (1, 2, 0.9, square(28, 30)))
    assert out.track_ids.tolist() == [1, 3]


def test_new_detections_suppress_each_other_but_not_below_threshold() -> None:
    state = TrackerState()
    # IoU(square(0, 0), square(0, 3)) = 70 / 130 > 0.4; square(0, 5) vs square(0, 0) = 50/150 < 0.4.
    out = step(state, 0, (0, 0, 0.9, square(0, 0)), (1, 0, 0.8, square(0, 3)), (2, 0, 0.7, square(0, 5)))
    assert out.track_ids.tolist() == [1, 3]


def test_track_nms_keeps_the_better_of_a_query_seen_twice() -> None:
    state = TrackerState()
    step(state, 0, (0, 0, 0.9, square(5, 5)))
    # One track query with two labels: identical masks, IoU 1 > 0.7.
    out = step(state, 1, (NUM_STATIC, 3, 0.6, square(5, 5)), (NUM_STATIC, 4, 0.3, square(5, 5)))
    assert out.track_ids.tolist() == [1]
    assert out.labels.tolist() == [3]
    assert state.tracks[1].label == 3


def test_low_score_continuation_keeps_the_old_embedding() -> None:
    state = TrackerState()
    step(state, 0, (0, 0, 0.9, square(5, 5)), (1, 1, 0.9, square(25, 30)))
    old = track_queries(state)[0].clone()
    # Both continue; track 1 below query_update_threshold (0.3), track 2 above it.
    out = step(state, 1, (NUM_STATIC, 0, 0.28, square(6, 6)), (NUM_STATIC + 1, 1, 0.5, square(26, 30)))
    assert out.track_ids.tolist() == [2, 1]
    queries, ids = track_queries(state)
    assert ids == [1, 2]
    assert torch.equal(queries[0], old[0])
    assert torch.equal(queries[1], features(1, 2)[NUM_STATIC + 1])
    # The rest of the memory is still updated.
    assert state.tracks[1].score == pytest.approx(0.28) and state.tracks[1].last_frame == 1


def test_unseen_track_is_removed_after_num_frames_retain() -> None:
    config = dataclasses.replace(CONFIG, num_frames_retain=3)
    state = TrackerState()
    step(state, 0, (0, 0, 0.9, square(0, 0)), (1, 1, 0.9, square(25, 30)), config=config)
    for frame in (1, 2):
        step(state, frame, (NUM_STATIC + 1, 1, 0.9, square(25, 30)), config=config)
        assert track_queries(state)[1] == [1, 2]  # 1 is absent but still queried
    step(state, 3, (NUM_STATIC + 1, 1, 0.9, square(25, 30)), config=config)
    queries, ids = track_queries(state)
    assert ids == [2]
    assert queries.shape == (1, DIM)


def test_frame_without_detections_returns_empty_and_leaves_memory() -> None:
    config = dataclasses.replace(CONFIG, num_frames_retain=2)
    state = TrackerState()
    step(state, 0, (0, 0, 0.9, square(0, 0)), config=config)
    before = dict(state.tracks)
    for frame in range(1, 6):
        out = step(state, frame, config=config)
        assert len(out) == 0 and out.masks.shape == (0, *SIZE) and out.frame_index == frame
    assert state.tracks == before and state.next_id == 2  # stale, but only removed on update
    step(state, 6, (3, 0, 0.9, square(25, 30)), config=config)
    assert list(state.tracks) == [2]


def test_track_query_order_is_insertion_order() -> None:
    state = TrackerState()
    step(state, 0, (0, 0, 0.5, square(0, 0)), (1, 0, 0.9, square(0, 20)), (2, 0, 0.7, square(25, 0)))
    assert track_queries(state)[1] == [1, 2, 3]  # ids follow the score order of new detections
    out = step(
        state, 1,
        (NUM_STATIC + 2, 0, 0.9, square(25, 0)),
        (NUM_STATIC + 0, 0, 0.8, square(0, 0)),
        (5, 0, 0.6, square(25, 30)),
    )
    assert out.track_ids.tolist() == [3, 1, 4]
    queries, ids = track_queries(state)
    assert ids == [1, 2, 3, 4]
    expected = features(1, 3)
    assert torch.equal(queries[0], expected[NUM_STATIC + 0])
    assert torch.equal(queries[2], expected[NUM_STATIC + 2])
    assert torch.equal(queries[3], expected[5])


def test_query_index_beyond_the_track_queries_is_rejected() -> None:
    state = TrackerState()
    with pytest.raises(ValueError, match="track queries"):
        update(state, detections((NUM_STATIC, 0, 0.9, square(0, 0))), features(0, 1), 0, CONFIG)


def test_memory_stays_flat_over_a_long_video() -> None:
    state = TrackerState()
    sizes = []
    for frame in range(100):
        query = 0 if frame == 0 else NUM_STATIC
        step(state, frame, (query, 0, 0.9, square(frame % 20, frame % 30)))
        sizes.append((len(state.tracks), state.next_id, state.num_bytes()))
    assert all(size == sizes[0] for size in sizes)
    assert sizes[0][0] == 1


def test_reset() -> None:
    state = TrackerState()
    step(state, 0, (0, 0, 0.9, square(0, 0)))
    state.reset()
    assert track_queries(state) == (None, []) and state.next_id == FIRST_TRACK_ID == 1


def test_mask_iou_is_exact_and_empty_pairs_overlap_fully() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(5, 17, 23, generator=generator) > 0.6
    b = torch.rand(3, 17, 23, generator=generator) > 0.3
    a[4] = False
    b[2] = False
    iou = mask_iou(a, b)
    for i in range(5):
        for j in range(3):
            inter = (a[i] & b[j]).sum().float()
            union = (a[i] | b[j]).sum().float()
            assert iou[i, j] == (inter + 1e-6) / (union + 1e-6)
    assert iou[4, 2] == 1.0
    assert torch.equal(mask_iou(a, a), mask_iou(a, a.clone()))  # the self-IoU shortcut


def test_mask_nms_whitelist() -> None:
    # Neighbours overlap with IoU 60 / 140 > 0.4; the outer two only 20 / 180.
    masks = torch.stack([square(0, 0), square(0, 4), square(0, 8), square(20, 20)])
    assert mask_nms(masks, 0.4).tolist() == [True, False, True, True]
    assert mask_nms(masks, 0.4, num_whitelisted=2).tolist() == [True, True, False, True]


def frame(index: int, ids: list[int], labels: list[int], scores: list[float]) -> FrameInstances:
    n = len(ids)
    return FrameInstances(
        index,
        torch.tensor(ids, dtype=torch.int64),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(scores, dtype=torch.float32),
        torch.zeros(n, *SIZE, dtype=torch.bool),
        torch.zeros(n, 4),
    )


def test_accumulator_mean_score_majority_label_and_ties() -> None:
    acc = TrackAccumulator()
    acc.add(frame(0, [5], [3], [0.5]))
    acc.add(frame(1, [5, 2], [1, 4], [0.25, 0.75]))
    acc.add(frame(2, [], [], []))
    acc.add(frame(3, [5, 2], [3, 0], [0.75, 0.25]))
    acc.add(frame(4, [2], [0], [0.5]))
    summaries = {s.track_id: s for s in acc.summaries()}
    assert [s.track_id for s in acc.summaries()] == [5, 2]  # order of first appearance
    five, two = summaries[5], summaries[2]
    assert five.score == pytest.approx(0.5) and five.label == 3
    assert (five.num_frames, five.first_frame, five.last_frame) == (3, 0, 3)
    assert two.score == pytest.approx(0.5) and two.label == 0
    assert (two.num_frames, two.first_frame, two.last_frame) == (3, 1, 4)

    tie = TrackAccumulator()
    tie.add(frame(0, [0], [9], [0.5]))
    tie.add(frame(1, [0], [2], [0.5]))
    assert tie.summaries()[0].label == 2  # bincount argmax: ties go to the smaller label
