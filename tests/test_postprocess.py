"""Post-processing: the pruned fast path equals the reference's full pass, thresholds, boxes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vppcli.config import TrackerConfig
from vppcli.model import postprocess
from vppcli.model.postprocess import Detections, detections_from_predictions, mask_boxes

PADDED = (36, 44)
IMAGE = (33, 41)
ORIGINAL = (50, 61)


def naive_detections(
    class_logits: Tensor,
    mask_logits: Tensor,
    num_static: int,
    padded: tuple[int, int],
    image: tuple[int, int],
    original: tuple[int, int],
    config: TrackerConfig,
) -> Detections:
    """The reference order of operations: resize every query's mask, then score every pair."""
    num_rows, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    up = F.interpolate(mask_logits[None], size=padded, mode="bilinear", align_corners=False)[0]
    up = up[:, : image[0], : image[1]]
    full = F.interpolate(up[:, None], size=original, mode="bilinear", align_corners=False)[:, 0]
    probs = F.softmax(class_logits, dim=-1)[:, :num_classes]
    pair_probs, flat = probs.flatten().topk(num_rows, sorted=False)
    query = flat // num_classes
    labels = flat % num_classes
    masks = full[query]
    binary = masks > 0
    inside = (masks.sigmoid() * binary).flatten(1).sum(1, dtype=torch.float64).float()
    scores = pair_probs * (inside / (binary.flatten(1).sum(1).float() + 1e-6))
    boxes = torch.zeros(len(query), 4)
    for i, mask in enumerate(binary):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    is_track = query >= num_static
    keep = (is_track & (scores > config.track_score_threshold)) | (
        ~is_track & (scores > config.new_score_threshold)
    )
    idx = keep.nonzero(as_tuple=True)[0]
    order = idx[torch.sort(scores[idx], descending=True, stable=True).indices]
    return Detections(
        query[order], labels[order], scores[order], binary[order], boxes[order], num_static
    )


def random_predictions(seed: int, num_static: int = 12, num_track: int = 3, num_classes: int = 5):
    generator = torch.Generator().manual_seed(seed)
    rows = num_static + num_track
    class_logits = torch.randn(rows, num_classes + 1, generator=generator) * 2.5
    # Some confident queries, and one split between two classes (it appears twice).
    confident = torch.randperm(rows, generator=generator)[:6]
    class_logits[confident, torch.randint(num_classes, (6,), generator=generator)] += 6.0
    class_logits[confident[0], :2] = 8.0
    # Noisy blobs of random position and size, so masks and boxes differ between queries.
    height, width = PADDED[0] // 4, PADDED[1] // 4
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    centre = torch.rand(rows, 2, generator=generator) * torch.tensor([height, width])
    radius = 1.0 + 2.5 * torch.rand(rows, 1, 1, generator=generator)
    dist2 = (ys - centre[:, 0, None, None]) ** 2 + (xs - centre[:, 1, None, None]) ** 2
    mask_logits = 8.0 * torch.exp(-dist2 / radius**2) - 3.0
    mask_logits += torch.randn(rows, height, width, generator=generator)
    return class_logits, mask_logits, num_static


def assert_same(fast: Detections, slow: Detections) -> None:
    assert torch.equal(fast.query_indices, slow.query_indices)
    assert torch.equal(fast.labels, slow.labels)
    assert torch.equal(fast.scores, slow.scores)
    assert torch.equal(fast.masks, slow.masks)
    assert torch.equal(fast.boxes, slow.boxes)
    assert fast.num_static_queries == slow.num_static_queries


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_equals_naive(seed: int) -> None:
    config = TrackerConfig()
    class_logits, mask_logits, num_static = random_predictions(seed)
    args = (class_logits, mask_logits, num_static, PADDED, IMAGE, ORIGINAL, config)
    fast = detections_from_predictions(*args)
    assert_same(fast, naive_detections(*args))
    assert fast.masks.shape[1:] == ORIGINAL and fast.masks.dtype == torch.bool
    assert fast.query_indices.dtype == torch.int64 and fast.scores.dtype == torch.float32
    assert bool((fast.scores[:-1] >= fast.scores[1:]).all())


def test_fast_path_covers_duplicates_and_track_queries() -> None:
    """Across the seeds above the comparison exercises the interesting cases."""
    config = TrackerConfig(track_score_threshold=0.05, new_score_threshold=0.05)
    duplicates = track_hits = 0
    for seed in range(6):
        class_logits, mask_logits, num_static = random_predictions(seed)
        args = (class_logits, mask_logits, num_static, PADDED, IMAGE, ORIGINAL, config)
        fast = detections_from_predictions(*args)
        assert_same(fast, naive_detections(*args))
        duplicates += len(fast) - len(torch.unique(fast.query_indices))
        track_hits += int((fast.query_indices >= num_static).sum())
    assert duplicates > 0 and track_hits > 0


def test_single_and_no_survivor() -> None:
    config = TrackerConfig()
    class_logits, mask_logits, num_static = random_predictions(0)
    class_logits[:, -1] = 20.0  # everything is background
    class_logits[4, 2] = 30.0
    mask_logits[4] = 5.0
    args = (class_logits, mask_logits, num_static, PADDED, IMAGE, ORIGINAL, config)
    fast = detections_from_predictions(*args)
    assert_same(fast, naive_detections(*args))
    assert fast.query_indices.tolist() == [4] and fast.labels.tolist() == [2]

    class_logits[4, 2] = 0.0
    empty = detections_from_predictions(*args)
    assert len(empty) == 0
    assert empty.masks.shape == (0, *ORIGINAL) and empty.boxes.shape == (0, 4)


def test_only_viable_queries_are_upsampled(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrackerConfig()
    class_logits, mask_logits, num_static = random_predictions(3)
    planes: list[int] = []
    original_interpolate = F.interpolate

    def counting_interpolate(x: Tensor, *args, **kwargs) -> Tensor:
        planes.append(x.shape[0] * x.shape[1])
        return original_interpolate(x, *args, **kwargs)

    monkeypatch.setattr(postprocess.F, "interpolate", counting_interpolate)
    detections_from_predictions(
        class_logits, mask_logits, num_static, PADDED, IMAGE, ORIGINAL, config
    )
    monkeypatch.undo()
    probs = F.softmax(class_logits, -1)[:, :-1]
    pair_probs, flat = probs.flatten().topk(len(class_logits))
    query = flat // probs.shape[1]
    threshold = torch.where(
        query >= num_static,
        torch.tensor(config.track_score_threshold),
        torch.tensor(config.new_score_threshold),
    )
    viable = len(torch.unique(query[pair_probs > threshold]))
    assert 0 < viable < len(class_logits)
    assert planes == [viable, viable]  # padded upsampling, then the resize to the original


def _logits_for(probabilities: list[list[float]]) -> Tensor:
    """Class logits whose softmax is the given rows (last column = no object)."""
    return torch.tensor([[math.log(p) for p in row] for row in probabilities])


def test_threshold_semantics_track_vs_static() -> None:
    """With saturated masks (mask score 1) the det score is the class probability."""
    config = TrackerConfig()  # track 0.25, static 0.3
    num_static = 2
    class_logits = _logits_for(
        [
            [0.27, 0.01, 0.72],  # static, 0.27: below the static threshold
            [0.36, 0.01, 0.63],  # static, 0.36: kept
            [0.27, 0.01, 0.72],  # track, 0.27: above the track threshold
            [0.23, 0.01, 0.76],  # track, 0.23: dropped
        ]
    )
    mask_logits = torch.full((4, 8, 8), 30.0)
    det = detections_from_predictions(
        class_logits, mask_logits, num_static, (32, 32), (32, 32), (32, 32), config
    )
    assert det.query_indices.tolist() == [1, 2]
    assert det.labels.tolist() == [0, 0]
    torch.testing.assert_close(det.scores, torch.tensor([0.36, 0.27]))
    assert det.num_static_queries == num_static


def test_masks_are_cropped_before_resizing() -> None:
    """A mask that lies only in the padding is empty in the frame, so it scores 0."""
    config = TrackerConfig()
    class_logits = _logits_for([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
    mask_logits = torch.full((2, 16, 16), -30.0)
    mask_logits[0, 4:8, 4:8] = 30.0  # inside the 48x48 image
    mask_logits[1, 14:, :] = 30.0  # only in the bottom padding rows (y >= 48 at full size)
    det = detections_from_predictions(
        class_logits, mask_logits, 2, (64, 64), (48, 64), (96, 128), config
    )
    assert det.query_indices.tolist() == [0]


def test_box_convention() -> None:
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[2, 9, 11] = True
    boxes = mask_boxes(masks)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[3, 2, 9, 5], [0, 0, 0, 0], [11, 9, 12, 10]]
    assert mask_boxes(masks[:0]).shape == (0, 4)


def test_detection_boxes_are_tight_mask_boxes() -> None:
    config = TrackerConfig()
    class_logits = _logits_for([[0.9, 0.05, 0.05]])
    mask_logits = torch.full((1, 8, 8), -30.0)
    mask_logits[0, 2:5, 1:4] = 30.0
    det = detections_from_predictions(class_logits, mask_logits, 1, (32, 32), (32, 32), (40, 40), config)
    ys, xs = torch.nonzero(det.masks[0], as_tuple=True)
    expected = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert det.boxes[0].tolist() == expected
