"""The training data pipeline: clip sampling, clip-consistent augmentation, targets, checks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from tests.ytvis_fixture import build_fixture, compressed_rle
from vppcli.config import PreprocessConfig
from vppcli.errors import InputError, UsageError
from vppcli.preprocess import preprocess_frame
from vppcli.training.clips import ClipConfig, choose_clip, choose_references, choose_video
from vppcli.training.data import ClipStream, TrainingDataset

RED, GREEN, BLUE = (230, 30, 30), (30, 220, 40), (40, 50, 230)
# Best quality without chroma subsampling, so that colours stay put at object edges.
JPEG_EXACT = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def box(x: int, y: int, w: int, h: int, colour: tuple[int, int, int] = RED, category_id: int = 1,
        dx: int = 0, absent: tuple[int, ...] = ()) -> dict[str, Any]:
    """An object: a w x h rectangle at (x + dx * t, y) in frame t, missing (null) in `absent`."""
    return {"box": (x, y, w, h), "colour": colour, "category_id": category_id, "dx": dx, "absent": absent}


def write_dataset(root: Path, videos: list[tuple[int, int, list[dict[str, Any]]]], size: tuple[int, int] = (60, 80),
                  categories: tuple[int, ...] = (1, 2, 3)) -> tuple[Path, Path, dict[str, Any]]:
    """videos: (video id, length, objects). Returns (annotation file, frames dir, JSON)."""
    height, width = size
    images = root / "JPEGImages"
    entries, annotations = [], []
    for video_id, length, objects in videos:
        (images / f"v{video_id}").mkdir(parents=True)
        segmentations: list[list[Any]] = [[] for _ in objects]
        file_names = []
        for t in range(length):
            frame = np.full((height, width, 3), 110, dtype=np.uint8)
            for k, obj in enumerate(objects):
                x, y, w, h = obj["box"]
                mask = np.zeros(size, dtype=bool)
                mask[y:y + h, x + obj["dx"] * t:x + obj["dx"] * t + w] = True
                if t in obj["absent"] or not mask.any():
                    segmentations[k].append(None)
                    continue
                frame[mask] = obj["colour"]
                segmentations[k].append(compressed_rle(mask))
            name = f"v{video_id}/{t:05d}.jpg"
            cv2.imwrite(str(images / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), JPEG_EXACT)
            file_names.append(name)
        entries.append({"id": video_id, "height": height, "width": width, "length": length, "file_names": file_names})
        for k, obj in enumerate(objects):
            annotations.append({"id": 100 + len(annotations), "video_id": video_id, "category_id": obj["category_id"],
                                "iscrowd": 0, "segmentations": segmentations[k]})
    data = {"videos": entries, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in categories]}
    return rewrite(root / "train.json", data), images, data


def rewrite(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def dataset(root: Path, videos: list[tuple[int, int, list[dict[str, Any]]]], seed: int = 0,
            **clip: Any) -> TrainingDataset:
    annotation_file, images, _ = write_dataset(root, videos)
    return TrainingDataset.from_files(annotation_file, images, ClipConfig(**{"long_sides": (80,), **clip}), seed=seed)


def same(a, b) -> bool:
    return (a.video_id == b.video_id and a.frame_indices == b.frame_indices and torch.equal(a.images, b.images)
            and all(torch.equal(x.masks, y.masks) and torch.equal(x.labels, y.labels)
                    and torch.equal(x.instance_ids, y.instance_ids) for x, y in zip(a.targets, b.targets)))


@pytest.fixture
def moving(tmp_path) -> TrainingDataset:
    """Two videos, a left red object moving right and a right green one, multi-scale."""
    videos = [(5, 20, [box(4, 10, 16, 20, dx=1), box(56, 30, 14, 12, GREEN, 2)]),
              (9, 8, [box(10, 5, 20, 20, BLUE, 3)])]
    return dataset(tmp_path, videos, long_sides=(64, 80, 112))


def test_a_sample_is_a_pure_function_of_seed_and_index(moving, tmp_path):
    first = [moving.sample(i) for i in (3, 0, 7)]
    again = [moving.sample(i) for i in (7, 3, 0)]  # any order, any instance: nothing is carried over
    assert same(first[0], again[1]) and same(first[1], again[2]) and same(first[2], again[0])
    clips = [moving.sample(i) for i in range(6)]
    assert not all(same(clips[0], c) for c in clips[1:])
    reseeded = TrainingDataset.from_files(moving.image_root.parent / "train.json", moving.image_root,
                                          moving.clip, seed=1)
    assert not all(same(moving.sample(i), reseeded.sample(i)) for i in range(6))


def test_streams_resume_split_ranks_and_match_with_workers(moving):
    whole = list(itertools.islice(ClipStream(moving), 6))
    resumed = list(itertools.islice(ClipStream(moving, start=4), 2))
    assert all(same(a, b) for a, b in zip(whole[4:], resumed))
    ranks = [list(itertools.islice(ClipStream(moving, rank=r, world_size=2), 3)) for r in (0, 1)]
    assert all(same(ranks[i % 2][i // 2], whole[i]) for i in range(6))
    threaded = list(itertools.islice(ClipStream(moving, start=4, workers=1), 2))
    assert all(same(a, b) for a, b in zip(resumed, threaded))
    with pytest.raises(UsageError, match="bad clip stream"):
        ClipStream(moving, rank=2, world_size=2)


def test_clips_are_sorted_within_the_window_without_duplicate_references():
    rng = np.random.default_rng(0)
    config = ClipConfig(num_frames=3, window=5)
    for _ in range(300):
        frames = choose_clip(rng, 30, [2, 14, 29], config)
        assert list(frames) == sorted(set(frames)) and len(frames) == 3
        assert any(f in (2, 14, 29) for f in frames)  # the key frame shows an object
        assert frames[-1] - frames[0] <= 2 * 5
    # A window too small for the clip takes the rest from further away, still without repeats.
    for _ in range(50):
        refs = choose_references(rng, 10, 0, 4, window=1)
        assert 1 in refs and len(set(refs)) == 4 and 0 not in refs


def test_videos_shorter_than_the_clip_repeat_frames():
    rng = np.random.default_rng(0)
    assert choose_clip(rng, 1, [0], ClipConfig(num_frames=3)) == (0, 0, 0)
    for _ in range(20):
        frames = choose_clip(rng, 2, [0, 1], ClipConfig(num_frames=3))
        assert set(frames) == {0, 1} and list(frames) == sorted(frames)


def test_a_video_is_drawn_in_proportion_to_its_length():
    rng = np.random.default_rng(0)
    offsets = np.cumsum([0, 10, 30, 60])
    counts = np.bincount([choose_video(rng, offsets) for _ in range(6000)], minlength=3)
    assert np.allclose(counts / 6000, [0.1, 0.3, 0.6], atol=0.03)


def test_the_key_frame_shows_an_object(tmp_path):
    data = dataset(tmp_path, [(1, 30, [box(10, 10, 20, 20, absent=tuple(range(25)))])], num_frames=2, window=1)
    for i in range(10):
        clip = data.sample(i)
        assert any(t.num_objects for t in clip.targets) and clip.frame_indices[-1] >= 24


def test_one_flip_per_clip_mirrors_images_and_masks_alike(moving):
    flipped = TrainingDataset.from_files(moving.image_root.parent / "train.json", moving.image_root,
                                         ClipConfig(long_sides=(80,), flip_prob=1.0))
    plain = TrainingDataset.from_files(moving.image_root.parent / "train.json", moving.image_root,
                                       ClipConfig(long_sides=(80,), flip_prob=0.0))
    for index in range(4):
        a, b = flipped.sample(index), plain.sample(index)
        assert a.frame_indices == b.frame_indices
        height, width = 60, 80  # long side 80: no resizing, only padding
        assert torch.allclose(a.images[..., :height, :width], b.images[..., :height, :width].flip(-1), atol=1e-5)
        for fa, fb in zip(a.targets, b.targets):
            assert torch.equal(fa.instance_ids, fb.instance_ids)
            assert torch.equal(fa.masks[..., :height, :width], fb.masks[..., :height, :width].flip(-1))
            if a.video_id == 5:  # the red object starts left and ends up right, in every frame
                red = fa.masks[fa.instance_ids.tolist().index(100)]
                assert red.nonzero()[:, 1].float().mean() > width / 2


@pytest.mark.parametrize(("long_side", "flip"), [(40, 0.0), (100, 1.0), (200, 0.0), (200, 1.0)])
def test_resized_masks_cover_the_resized_object(tmp_path, long_side, flip):
    data = dataset(tmp_path, [(1, 3, [box(13, 17, 31, 23)])], long_sides=(long_side,), flip_prob=flip)
    clip = data.sample(0)
    mean = torch.tensor(data.preprocess.mean).view(3, 1, 1)
    std = torch.tensor(data.preprocess.std).view(3, 1, 1)
    for image, target in zip(clip.images, clip.targets):
        # How much of each pixel the red object covers, read back from the red channel (110 -> 230).
        coverage = ((image * std + mean)[0] - 110) / (230 - 110)
        mask = target.masks[0]
        assert mask[coverage > 0.65].all() and not mask[coverage < 0.35].any()
        assert (coverage > 0.65).sum() > 0.5 * mask.sum()
        # The mask's area scales with the image's.
        scale = long_side / 80
        assert abs(mask.sum().item() - 31 * 23 * scale**2) <= 2 * (31 + 23) * scale + 4


def test_normalisation_and_zero_padding_as_at_inference(tmp_path):
    data = dataset(tmp_path, [(1, 2, [box(60, 40, 20, 20)])], long_sides=(100,), flip_prob=0.0)
    clip = data.sample(0)  # 60x80 -> 75x100, padded to 96x128
    assert clip.images.shape[-2:] == (96, 128) and clip.targets[0].masks.shape[-2:] == (96, 128)
    frame = cv2.cvtColor(cv2.imread(str(data.image_root / data.videos[0].video.file_names[clip.frame_indices[0]])),
                         cv2.COLOR_BGR2RGB)
    expected, _ = preprocess_frame(frame, PreprocessConfig(long_side=100))
    assert torch.equal(clip.images[0], expected[0])
    for image, target in zip(clip.images, clip.targets):
        assert not image[:, 75:].any() and not image[:, :, 100:].any()
        assert not target.masks[:, 75:].any() and not target.masks[:, :, 100:].any()
        assert target.masks[:, 74, 99].all()  # the object touches the image corner, not the padding


def test_absent_objects_are_missing_from_their_frames_and_ids_stay(tmp_path):
    objects = [box(5, 5, 10, 10, category_id=3, absent=(1,)), box(40, 30, 12, 12, GREEN, 1)]
    data = dataset(tmp_path, [(4, 3, objects)], num_frames=3, flip_prob=0.0)
    clip = data.sample(0)
    assert clip.frame_indices == (0, 1, 2)
    ids = [t.instance_ids.tolist() for t in clip.targets]
    assert ids == [[100, 101], [101], [100, 101]]
    assert [t.labels.tolist() for t in clip.targets] == [[2, 0], [0], [2, 0]]


def test_objects_emptied_by_downscaling_leave_only_that_frame(tmp_path):
    objects = [box(40, 30, 1, 1, absent=(1,)), box(5, 5, 20, 20, GREEN, 2)]
    data = dataset(tmp_path, [(1, 3, objects)], long_sides=(20,), num_frames=3)
    assert [t.instance_ids.tolist() for t in data.sample(0).targets] == [[101]] * 3


def test_labels_are_contiguous_in_category_id_order(tmp_path):
    fixture = build_fixture(tmp_path)  # categories 1, 2, 4; uncompressed RLEs; absent objects
    data = TrainingDataset.from_files(fixture.annotation_file, fixture.images, ClipConfig(long_sides=(64,)))
    assert data.class_names == ("person", "car", "dog") and data.category_ids == (1, 2, 4)
    labels = {int(label) for i in range(30) for t in data.sample(i).targets for label in t.labels}
    assert labels == {0, 1, 2}


def test_polygons_are_decoded(tmp_path):
    annotation_file, images, data = write_dataset(tmp_path, [(1, 2, [box(10, 10, 20, 20)])])
    square = [10, 10, 30, 10, 30, 30, 10, 30]
    data["annotations"][0]["segmentations"] = [[square, [1, 2]], None]  # a 1-point polygon is dropped
    data = TrainingDataset.from_files(rewrite(annotation_file, data), images, ClipConfig(long_sides=(80,),
                                                                                         num_frames=1))
    masks = data.sample(0).targets[0].masks
    assert masks.shape[0] == 1 and 380 <= masks.sum() <= 450


def test_multi_scale_draws_one_size_per_clip(moving):
    sizes = set()
    for index in range(20):
        clip = moving.sample(index)
        assert all(t.masks.shape[-2:] == clip.images.shape[-2:] for t in clip.targets)
        sizes.add(tuple(clip.images.shape[-2:]))
    assert sizes == {(64, 64), (64, 96), (96, 128)}


def _no_annotations(data):
    data.pop("annotations")


def _mutate(path: str, value: Any):
    """Set data[path] (dotted, integer parts index lists) to `value`."""
    def apply(data):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = data
        for part in parents:
            target = target[part]
        target[last] = value
    return apply


BAD_INPUTS = [
    (lambda d: d.pop("videos"), "is not a YouTube-VIS annotation file"),
    (_mutate("videos", []), "has no videos"),
    (_no_annotations, "no annotations: training needs ground truth"),
    (_mutate("videos.0.length", 7), "has length 7 but 3 file names"),
    (_mutate("annotations.0.segmentations", [None]), "1 segmentations but video 1 has 3 frames"),
    (_mutate("annotations.0.segmentations.0.size", [30, 40]), r"RLE size \[30, 40\] differs from the video size"),
    (_mutate("annotations.0.segmentations.0.counts", "zz"), "bad RLE counts"),
    (_mutate("annotations.0.segmentations.0.counts", "0:d0"), "do not cover 60x80 pixels"),  # well formed
    (_mutate("categories.1.id", 1), "duplicate category ids"),
    (_mutate("annotations.1.category_id", 9), "unknown category id 9"),
    (_mutate("annotations.1.id", 100), "duplicate annotation id 100"),
    (_mutate("annotations.1.id", None), "id None is not an integer"),
    (_mutate("annotations.1.video_id", 3), "unknown video id 3"),
    (_mutate("videos.0.file_names.2", "v1/missing.jpg"), "missing frame .*missing.jpg"),
]


@pytest.mark.parametrize(("damage", "message"), BAD_INPUTS)
def test_bad_inputs_fail_up_front_with_one_line(tmp_path, damage, message):
    annotation_file, images, data = write_dataset(tmp_path, [(1, 3, [box(5, 5, 10, 10), box(30, 30, 10, 10)])])
    damage(data)
    with pytest.raises(InputError, match=message) as error:
        TrainingDataset.from_files(rewrite(annotation_file, data), images)
    assert "\n" not in str(error.value)


def test_frames_that_do_not_match_the_video_fail_when_read(tmp_path):
    annotation_file, images, data = write_dataset(tmp_path, [(1, 2, [box(5, 5, 10, 10)])])
    cv2.imwrite(str(images / data["videos"][0]["file_names"][0]), np.zeros((30, 40, 3), np.uint8))
    (images / data["videos"][0]["file_names"][1]).write_bytes(b"not a jpeg")
    data = TrainingDataset.from_files(annotation_file, images, ClipConfig(num_frames=2))
    with pytest.raises(InputError, match="is 40x30 but video 1 is 80x60|cannot decode frame"):
        data.sample(0)


def test_bad_settings_are_usage_errors(moving):
    for settings in ({"num_frames": 0}, {"window": 0}, {"long_sides": ()}, {"flip_prob": 1.5}):
        with pytest.raises(UsageError):
            ClipConfig(**settings)
    with pytest.raises(UsageError, match="seed must be >= 0"):
        TrainingDataset.from_files(moving.image_root.parent / "train.json", moving.image_root, seed=-1)
    with pytest.raises(ValueError, match="index must be >= 0"):
        moving.sample(-1)
