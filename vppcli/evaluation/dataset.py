"""YouTube-VIS datasets on disk: finding a split's annotation file and frames, reading and
checking them, and matching a model's classes to the dataset's categories.

Layouts found under `--data-root` (the root may also be the year's directory itself):
- detectron2: `ytvis_2021/{split}.json` with `ytvis_2021/{split}/JPEGImages/`
- mmtrack: `youtube_vis_2021/annotations/youtube_vis_2021_{split}.json` with `youtube_vis_2021/{split}/JPEGImages/`
- the official download: `{split}/instances.json` with `{split}/JPEGImages/`
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vppcli.config import VppConfig
from vppcli.errors import InputError, UsageError
from vppcli.evaluation.metric import brief, is_integer, listing
from vppcli.outputs.atomic import AtomicFile, ensure_output_dir

log = logging.getLogger(__name__)

DATASET_YEARS = {"ytvis19": "2019", "ytvis21": "2021"}


@dataclass(frozen=True)
class Category:
    id: int
    name: str


@dataclass(frozen=True)
class Video:
    """One video of the annotation file; `file_names` are relative to the JPEGImages directory."""

    id: int
    height: int
    width: int
    file_names: tuple[str, ...]

    @property
    def length(self) -> int:
        return len(self.file_names)


@dataclass(frozen=True)
class YtvisDataset:
    """A split: its annotation file (parsed once; `data` is the JSON for the metric), its frames,
    its videos (ascending id) and categories (ascending id)."""

    annotation_file: Path
    image_root: Path | None
    videos: tuple[Video, ...]
    categories: tuple[Category, ...]
    has_ground_truth: bool
    data: Mapping[str, Any] = field(repr=False, compare=False)

    def select(self, video_ids: Sequence[int] | None = None, limit: int | None = None) -> tuple[Video, ...]:
        """The chosen videos, ascending id: `video_ids` (all if None), then the first `limit`."""
        chosen = self.videos
        if video_ids is not None:
            known = {v.id for v in self.videos}
            unknown = sorted(set(video_ids) - known)
            if unknown:
                raise UsageError(f"--videos: no video with id {listing(unknown)} in {self.annotation_file}")
            wanted = set(video_ids)
            chosen = tuple(v for v in chosen if v.id in wanted)
        return chosen if limit is None else chosen[:limit]

    def frame_files(self, video: Video) -> tuple[Path, ...]:
        if self.image_root is None:
            raise UsageError("no frames directory: pass --images DIR (or --data-root)")
        return tuple(self.image_root / name for name in video.file_names)

    def check_frames(self, videos: Iterable[Video]) -> None:
        """Fail on the first missing frame, before hours of inference rather than in the middle."""
        for video in videos:
            for path in self.frame_files(video):
                if not path.is_file():
                    raise InputError(f"missing frame {path} (video {video.id}); check --data-root, --split or --images")


def locate_split(dataset: str | None, data_root: Path | None, split: str, annotations: Path | None = None,
                 images: Path | None = None, need_images: bool = True) -> tuple[Path, Path | None]:
    """(annotation file, JPEGImages directory or None) of a split; explicit paths win over discovery."""
    if annotations is not None and (images is not None or not need_images):
        return _existing_file(annotations), None if images is None else _existing_dir(images)
    if data_root is None or dataset is None:
        raise UsageError("give --dataset and --data-root (or --annotations FILE and --images DIR)")
    year = DATASET_YEARS.get(dataset)
    if year is None:
        raise UsageError(f"unknown --dataset {dataset!r}; choose from {', '.join(DATASET_YEARS)}")
    if not data_root.is_dir():
        raise InputError(f"data root {data_root} is not a directory")
    bases = [b for b in (data_root, data_root / f"ytvis_{year}", data_root / f"youtube_vis_{year}") if b.is_dir()]
    if annotations is None:
        found = next(((b, p) for b in bases for p in _annotation_candidates(b, year, split) if p.is_file()), None)
        if found is None:
            raise _no_split(data_root, bases, year, split)
        # Frames next to the annotation file first: a root may hold both layouts.
        bases.remove(found[0])
        bases.insert(0, found[0])
        annotations = found[1]
    if images is None:
        images = next((b / split / "JPEGImages" for b in bases if (b / split / "JPEGImages").is_dir()), None)
        if images is None and need_images:
            raise InputError(f"no frames for split {split!r}: {bases[0] / split / 'JPEGImages'} is missing; "
                             "pass --images DIR")
    return _existing_file(annotations), None if images is None else _existing_dir(images)


def _no_split(data_root: Path, bases: list[Path], year: str, split: str) -> InputError:
    frames = [b / split / "JPEGImages" for b in bases if (b / split / "JPEGImages").is_dir()]
    if frames:
        base = frames[0].parent.parent
        return InputError(f"found {frames[0]} but no annotation file for split {split!r}; looked for "
                          f"{', '.join(str(p) for p in _annotation_candidates(base, year, split))}")
    splits = sorted({s for base in bases for s in _splits_present(base, year)})
    if splits:
        return InputError(f"no split {split!r} of YouTube-VIS {year} under {data_root} "
                          f"(found: {', '.join(splits)}); choose one with --split")
    return InputError(
        f"no YouTube-VIS {year} data under {data_root}: expected ytvis_{year}/{split}.json (detectron2 layout) "
        f"or youtube_vis_{year}/annotations/youtube_vis_{year}_{split}.json (mmtrack layout)"
    )


def load_dataset(annotation_file: Path, image_root: Path | None) -> YtvisDataset:
    """Read and check an annotation file (videos, categories and, if present, annotations)."""
    data = read_json(annotation_file)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) \
            or not isinstance(data.get("categories"), list):
        raise InputError(f"{annotation_file} is not a YouTube-VIS annotation file (no videos or categories)")
    # Files without ground truth lack annotations or (like some official valid splits) hold null.
    if not isinstance(data.get("annotations", []), (list, type(None))):
        raise InputError(f"{annotation_file}: annotations is not a list")
    for section, fields in _FIELDS.items():
        for position, entry in enumerate(data.get(section) or []):
            _check_entry(entry, f"{annotation_file}: {section}[{position}]", fields)
    categories = tuple(sorted((Category(int(c["id"]), c["name"]) for c in data["categories"]), key=lambda c: c.id))
    videos = tuple(sorted((_video(v, annotation_file) for v in data["videos"]), key=lambda v: v.id))
    if len({v.id for v in videos}) != len(videos):
        raise InputError(f"{annotation_file}: duplicate video ids")
    return YtvisDataset(annotation_file, image_root, videos, categories, bool(data.get("annotations")), data)


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON (line {error.lineno}: {error.msg})") from None


def split_videos(data: Mapping[str, Any], count: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(held out, rest): `count` videos drawn at random (seeded) with their annotations, and the
    others; for a local validation split made from train, whose frames stay where they are."""
    ids = sorted(int(v["id"]) for v in data["videos"])
    if not 0 < count < len(ids):
        raise UsageError(f"--val-videos must be between 1 and {len(ids) - 1} (the file has {len(ids)} videos)")
    held_out = set(random.Random(seed).sample(ids, count))

    def part(keep: bool) -> dict[str, Any]:
        return {**data,
                "videos": [v for v in data["videos"] if (int(v["id"]) in held_out) == keep],
                "annotations": [a for a in data.get("annotations", []) if (int(a["video_id"]) in held_out) == keep]}

    return part(True), part(False)


def write_json(path: Path, payload: Any, indent: int | None = None) -> Path:
    """Write JSON atomically (compact unless `indent`), creating the directory."""
    if not path.parent.is_dir():
        ensure_output_dir(path.parent)
    text = json.dumps(payload, indent=indent, separators=None if indent else (",", ":"))
    with AtomicFile(path) as handle:
        handle.write(text + "\n")
    return path


@dataclass(frozen=True)
class ClassMapping:
    """How the model's labels become dataset categories.

    category_ids: label i -> dataset category id; labels without a dataset category get a negative
        placeholder (they are filtered out through `kept_classes` and never reach the results).
    kept_classes: class names to keep (None: all of the model's).
    model_only / dataset_only: names present on one side only (empty when the classes match).
    """

    category_ids: tuple[int, ...]
    kept_classes: tuple[str, ...] | None
    model_only: tuple[str, ...] = ()
    dataset_only: tuple[str, ...] = ()


def normalise(name: str) -> str:
    """`Tennis Racket`, `tennis-racket` and `tennis_racket` are one class."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def match_classes(config: VppConfig, categories: Sequence[Category], allow_mismatch: bool) -> ClassMapping:
    """Map the model's classes onto the dataset's by name; refuse a mismatch unless allowed."""
    by_name = {normalise(c.name): c for c in categories}
    model_names = [normalise(n) for n in config.class_names]
    model_only = tuple(n for n, m in zip(config.class_names, model_names) if m not in by_name)
    dataset_only = tuple(c.name for c in categories if normalise(c.name) not in set(model_names))
    ids = tuple(by_name[m].id if m in by_name else -1 - i for i, m in enumerate(model_names))
    if not model_only and not dataset_only:
        return ClassMapping(ids, None)
    detail = (f"model only: {listing(model_only) or '-'}; dataset only: {listing(dataset_only) or '-'}")
    if not allow_mismatch:
        raise UsageError(f"the model's classes differ from the dataset's ({detail}); "
                         "pass --allow-class-mismatch to evaluate the classes both share")
    shared = tuple(n for n, m in zip(config.class_names, model_names) if m in by_name)
    if not shared:
        raise UsageError(f"the model and the dataset share no class ({detail})")
    log.warning("evaluating only the %d classes the model and the dataset share (%s)", len(shared), detail)
    return ClassMapping(ids, shared, model_only, dataset_only)


def _is_size(value: Any) -> bool:
    return is_integer(value) and value > 0


def _is_file_names(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(name, str) for name in value)


# Per section of the annotation file: field -> (required, check, what the check wants). What the
# metric, the split and the runner read, checked up front so that a bad entry is named in one line.
_FIELDS: dict[str, dict[str, tuple[bool, Callable[[Any], bool], str]]] = {
    "videos": {"id": (True, is_integer, "an integer"), "height": (True, _is_size, "a positive integer"),
               "width": (True, _is_size, "a positive integer"),
               "file_names": (True, _is_file_names, "a non-empty list of file names"),
               "length": (False, is_integer, "an integer")},
    "categories": {"id": (True, is_integer, "an integer"), "name": (True, lambda v: isinstance(v, str), "a string")},
    "annotations": {"video_id": (True, is_integer, "an integer"), "category_id": (True, is_integer, "an integer"),
                    "segmentations": (True, lambda v: isinstance(v, list), "a list")},
}


def _check_entry(entry: Any, where: str, fields: Mapping[str, tuple[bool, Callable[[Any], bool], str]]) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{where} is not an object")
    if "id" in entry:
        where += f" (id {brief(entry['id'])})"
    for key, (required, check, wanted) in fields.items():
        if key not in entry:
            if required:
                raise InputError(f"{where} has no {key}")
        elif not check(entry[key]):
            raise InputError(f"{where}: {key} {brief(entry[key])} is not {wanted}")


def _video(raw: Mapping[str, Any], annotation_file: Path) -> Video:
    video = Video(int(raw["id"]), int(raw["height"]), int(raw["width"]), tuple(raw["file_names"]))
    if "length" in raw and int(raw["length"]) != video.length:
        raise InputError(f"{annotation_file}: video {video.id} has length {raw['length']} "
                         f"but {video.length} file names")
    return video


def _annotation_candidates(base: Path, year: str, split: str) -> tuple[Path, ...]:
    return (base / f"{split}.json", base / "annotations" / f"youtube_vis_{year}_{split}.json",
            base / split / "instances.json")


def _splits_present(base: Path, year: str) -> set[str]:
    prefix = f"youtube_vis_{year}_"
    found = {p.stem for p in base.glob("*.json")}
    found |= {p.stem[len(prefix):] for p in (base / "annotations").glob(f"{prefix}*.json")}
    found |= {p.parent.name for p in base.glob("*/instances.json")}
    return found


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"no such annotation file: {path}")
    return path


def _existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise InputError(f"no such frames directory: {path}")
    return path
