"""Finding and checking YouTube-VIS splits on disk, class matching, efficiency bookkeeping."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.ytvis_fixture import build_fixture
from vppcli.config import YTVIS_2021_CLASSES, preset
from vppcli.errors import InputError, UsageError
from vppcli.evaluation import Category, load_dataset, locate_split, match_classes
from vppcli.efficiency import EfficiencyMeter, merged
from vppcli.results import FrameStats


@pytest.mark.parametrize("layout", ["detectron2", "mmtrack"])
def test_both_layouts_are_found_from_the_root_or_the_year_directory(tmp_path, layout):
    data = build_fixture(tmp_path, layout=layout, split="train")
    for root in (tmp_path, data.images.parent.parent):
        assert locate_split("ytvis21", root, "train") == (data.annotation_file, data.images)


def test_the_official_download_layout_and_2019(tmp_path):
    data = build_fixture(tmp_path, split="train", year="2019")
    official = tmp_path / "ytvis_2019" / "train" / "instances.json"
    data.annotation_file.rename(official)
    assert locate_split("ytvis19", tmp_path, "train") == (official, data.images)
    with pytest.raises(InputError, match="no YouTube-VIS 2021 data under"):
        locate_split("ytvis21", tmp_path, "train")


def test_explicit_paths_override_discovery(tmp_path):
    data = build_fixture(tmp_path / "a")
    local = tmp_path / "local_val.json"
    shutil.copy(data.annotation_file, local)
    assert locate_split(None, None, "valid", local, data.images) == (local, data.images)
    assert locate_split(None, None, "valid", local, need_images=False) == (local, None)
    # Annotations given, frames discovered under the root.
    assert locate_split("ytvis21", data.root, "train", annotations=local) == (local, data.images)
    with pytest.raises(UsageError, match="--dataset and --data-root"):
        locate_split(None, None, "valid", local)
    with pytest.raises(UsageError, match="unknown --dataset 'coco'"):
        locate_split("coco", data.root, "valid")


def test_a_missing_split_names_those_present(tmp_path):
    build_fixture(tmp_path, split="train")
    build_fixture(tmp_path, split="minival")
    with pytest.raises(InputError, match=r"no split 'valid' .* \(found: minival, train\); choose one with --split"):
        locate_split("ytvis21", tmp_path, "valid")


def test_frames_without_annotations_and_annotations_without_frames(tmp_path):
    data = build_fixture(tmp_path)
    data.annotation_file.unlink()
    with pytest.raises(InputError, match="JPEGImages but no annotation file for split 'train'"):
        locate_split("ytvis21", tmp_path, "train")
    data = build_fixture(tmp_path / "other")
    shutil.rmtree(data.images)
    with pytest.raises(InputError, match="JPEGImages is missing; pass --images DIR"):
        locate_split("ytvis21", data.root, "train")
    assert locate_split("ytvis21", data.root, "train", need_images=False) == (data.annotation_file, None)


def test_load_dataset_sorts_and_checks(tmp_path):
    data = build_fixture(tmp_path)
    dataset = load_dataset(data.annotation_file, data.images)
    assert [v.id for v in dataset.videos] == [3, 7, 12] and [c.id for c in dataset.categories] == [1, 2, 4]
    assert dataset.has_ground_truth
    assert [v.id for v in dataset.select(limit=2)] == [3, 7]
    assert [v.id for v in dataset.select([12, 3])] == [3, 12]
    with pytest.raises(UsageError, match="no video with id 5, 6"):
        dataset.select([3, 6, 5])
    assert dataset.frame_files(dataset.videos[0])[0] == data.images / "video_1" / "00000.jpg"

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="broken.json is not valid JSON"):
        load_dataset(broken, None)
    broken.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="not a YouTube-VIS annotation file"):
        load_dataset(broken, None)
    bad_length = dict(data.data, videos=[dict(data.data["videos"][0], length=99)])
    broken.write_text(json.dumps(bad_length))
    with pytest.raises(InputError, match="video 7 has length 99 but 5 file names"):
        load_dataset(broken, None)


@pytest.mark.parametrize(("section", "change", "message"), [
    ("annotations", {"video_id": None}, r"annotations\[0\] \(id 1\) has no video_id"),
    ("annotations", {"category_id": "1"}, r"annotations\[0\] \(id 1\): category_id '1' is not an integer"),
    ("annotations", {"segmentations": 5}, r"annotations\[0\] \(id 1\): segmentations 5 is not a list"),
    ("videos", {"height": 0}, r"videos\[0\] \(id 7\): height 0 is not a positive integer"),
    ("videos", {"file_names": [1, 2]}, r"videos\[0\] \(id 7\): file_names \[1, 2\] is not a non-empty list"),
    ("videos", {"id": None}, r"videos\[0\] has no id"),
    ("categories", {"name": 3}, r"categories\[0\] \(id 1\): name 3 is not a string"),
])
def test_malformed_entries_are_named_in_one_line(tmp_path, section, change, message):
    data = build_fixture(tmp_path).data
    entry = {k: v for k, v in {**data[section][0], **change}.items() if v is not None}
    data[section][0] = entry
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(InputError, match=f"broken.json: {message}") as raised:
        load_dataset(broken, None)
    assert "\n" not in str(raised.value)


def test_sections_of_the_wrong_shape_are_refused(tmp_path):
    data = build_fixture(tmp_path).data
    broken = tmp_path / "broken.json"
    for payload, message in (({**data, "annotations": {}}, "annotations is not a list"),
                             ({**data, "videos": [3]}, r"videos\[0\] is not an object")):
        broken.write_text(json.dumps(payload))
        with pytest.raises(InputError, match=message):
            load_dataset(broken, None)
    broken.write_text(json.dumps({**data, "annotations": None}))  # as a split without ground truth may have
    assert not load_dataset(broken, None).has_ground_truth


def test_class_matching_by_name():
    config = preset("compact")
    ytvis21 = [Category(i + 1, name) for i, name in enumerate(YTVIS_2021_CLASSES)]
    same = match_classes(config, ytvis21, allow_mismatch=False)
    assert same.kept_classes is None and same.category_ids == tuple(range(1, 41))
    # Ids come from the dataset, names are compared loosely.
    renamed = [Category(100 + c.id, c.name.replace("_", " ").title()) for c in ytvis21]
    assert match_classes(config, renamed, allow_mismatch=False).category_ids == tuple(range(101, 141))

    ytvis19_like = [c for c in ytvis21 if c.name not in ("bird", "squirrel")]
    ytvis19_like += [Category(90, "eagle"), Category(91, "owl")]
    with pytest.raises(UsageError, match="model only: bird, squirrel; dataset only: eagle, owl"):
        match_classes(config, ytvis19_like, allow_mismatch=False)
    shared = match_classes(config, ytvis19_like, allow_mismatch=True)
    assert shared.kept_classes is not None and len(shared.kept_classes) == 38 and "bird" not in shared.kept_classes
    assert shared.category_ids[YTVIS_2021_CLASSES.index("bird")] < 0
    with pytest.raises(UsageError, match="share no class"):
        match_classes(config, [Category(1, "spaceship")], allow_mismatch=True)


def test_efficiency_means_over_frames_and_merge_in_order():
    config = preset("compact")
    meters = []
    for tokens in ([24] * 12, [24, 12, 12, 6, 6, 6, 6, 6, 6, 6, 6, 6]):
        meter = EfficiencyMeter(seconds=2.0)
        meter.add_frame(config, FrameStats(tokens, 24, None, (64, 96), 0))
        meters.append(EfficiencyMeter.from_dict(json.loads(json.dumps(meter.to_dict()))))
    report = merged(meters).report()
    assert report.frames == 2 and report.fps == pytest.approx(0.5)
    assert report.keep_ratio_per_block[:4] == pytest.approx((1.0, 0.75, 0.75, 0.625))
    assert report.keep_ratio == pytest.approx((1.0 + 102 / 288) / 2)  # mean of the frames' PKRs
    assert report.gflops_per_frame["total"] == pytest.approx(
        report.gflops_per_frame["backbone"] + report.gflops_per_frame["head"])
