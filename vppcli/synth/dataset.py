"""Writing synthetic splits to disk in the official YouTube-VIS layout, atomically, on worker
processes.

Layout (what `vpp eval --dataset ytvis21 --data-root OUT --split SPLIT` finds, as the official
download, and what `--annotations OUT/SPLIT/instances.json --images OUT/SPLIT/JPEGImages` reads):

    OUT/SPLIT/instances.json                  videos, categories, annotations (RLE), info
    OUT/SPLIT/JPEGImages/SPLIT_00000/00000.jpg ...
    OUT/SPLIT/videos/SPLIT_00000.mp4          with `mp4=True` only

Each split is filled under a hidden temporary directory next to it and renamed into place once
every split of the call is complete: a crash or Ctrl-C leaves no partial split.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from vppcli import __version__
from vppcli.errors import OutputError, UsageError
from vppcli.outputs.atomic import AtomicDirectory, ensure_output_dir, remove_quietly
from vppcli.outputs.encoders import make_encoder
from vppcli.synth.backgrounds import photos_version, resolve_source
from vppcli.synth.config import GENERATOR_VERSION, SynthConfig
from vppcli.synth.render import MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS, build_video, render_frames
from vppcli.synth.shapes import CATEGORIES

log = logging.getLogger(__name__)

ANNOTATION_FILE = "instances.json"
MP4_FPS = 6.0  # YouTube-VIS annotates every fifth frame of 30 fps videos
SEED_RULE = "video i (0-based) of split s: numpy SeedSequence([seed, {train: 0, valid: 1}[s], i])"
ProgressCallback = Callable[[str, int, int], None]  # (split, videos done, videos in the split)


@dataclass(frozen=True)
class SplitSummary:
    split: str
    directory: Path
    videos: int
    frames: int
    instances: int
    seconds: float

    @property
    def annotation_file(self) -> Path:
        return self.directory / ANNOTATION_FILE

    @property
    def images(self) -> Path:
        return self.directory / "JPEGImages"

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "annotations": str(self.annotation_file), "images": str(self.images),
                "videos": self.videos, "frames": self.frames, "instances": self.instances,
                "seconds": round(self.seconds, 3), "videos_per_second": round(self.videos / max(self.seconds, 1e-9), 3)}


@dataclass(frozen=True)
class SynthSummary:
    splits: tuple[SplitSummary, ...]
    backgrounds: str

    def to_dict(self) -> dict[str, Any]:
        return {"backgrounds": self.backgrounds, "splits": [s.to_dict() for s in self.splits]}


@dataclass(frozen=True)
class _Job:
    config: SynthConfig
    index: int
    source: Literal["photos", "procedural"]
    directory: Path  # the split's temporary directory
    mp4: bool


@dataclass(frozen=True)
class _Track:
    """One object's ground truth over the video: per frame an RLE dict, area and box, or None."""

    category_id: int
    segmentations: list[dict[str, Any] | None]
    areas: list[int | None]
    bboxes: list[list[int] | None]


@dataclass(frozen=True)
class _VideoRecord:
    name: str
    file_names: list[str]
    tracks: list[_Track]


def video_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def generate(out_dir: Path, configs: SynthConfig | Sequence[SynthConfig], workers: int = 1,
             overwrite: bool = False, mp4: bool = False,
             on_progress: ProgressCallback | None = None) -> SynthSummary:
    """Generate one split per config into `out_dir` (see the module docstring for the layout).

    With `workers` > 1 videos are rendered in spawned processes, which import the calling
    script again: guard a script's own work with `if __name__ == "__main__":`.

    Raises:
        UsageError: a split already exists (without `overwrite`), two configs name one split,
            `workers` below 1, or photo backgrounds asked for without scikit-image.
        OutputError: `out_dir` or a file in it cannot be written.
    """
    configs = (configs,) if isinstance(configs, SynthConfig) else tuple(configs)
    if len({c.split for c in configs}) != len(configs):
        raise UsageError("each split can be generated once per call")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers!r}")
    sources = [resolve_source(c.backgrounds) for c in configs]
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"cannot write to {out_dir}: not a directory")
    for config in configs:
        final = out_dir / config.split
        if final.exists() and not overwrite and (not final.is_dir() or any(final.iterdir())):
            raise UsageError(f"{final} already exists; pass --overwrite to replace it")
    ensure_output_dir(out_dir)
    for config in configs:
        _remove_stale_temporaries(out_dir, config.split)
    targets: list[AtomicDirectory] = []
    summaries: list[SplitSummary] = []
    try:
        with _video_mapper(workers) as run:
            for config, source in zip(configs, sources):
                target = AtomicDirectory(out_dir / config.split)
                targets.append(target)
                summaries.append(_write_split(run, config, source, target, mp4, on_progress))
        for target in targets:
            target.finish()
    except BaseException:
        for target in targets:
            target.discard()
        raise
    for target in targets:
        target.commit()
    return SynthSummary(tuple(summaries), ",".join(sorted(set(sources))))


def _write_split(run: Callable[[Iterable[_Job]], Iterator[_VideoRecord]], config: SynthConfig,
                 source: Literal["photos", "procedural"], target: AtomicDirectory, mp4: bool,
                 on_progress: ProgressCallback | None) -> SplitSummary:
    started = time.perf_counter()
    jobs = (_Job(config, index, source, target.temporary, mp4) for index in range(config.videos))
    records: list[_VideoRecord] = []
    for record in run(jobs):  # in video order, whatever the number of workers
        records.append(record)
        if on_progress is not None:
            on_progress(config.split, len(records), config.videos)
    data = _annotation_file(config, source, records)
    try:
        (target.temporary / ANNOTATION_FILE).write_text(json.dumps(data, separators=(",", ":")) + "\n",
                                                        encoding="utf-8")
    except OSError as error:
        raise OutputError(f"cannot write {target.final / ANNOTATION_FILE}: {error.strerror or error}") from error
    log.info("%s: %d videos, %d instances", config.split, len(records), len(data["annotations"]))
    return SplitSummary(config.split, target.final, len(records), len(records) * config.frames,
                        len(data["annotations"]), time.perf_counter() - started)


def _annotation_file(config: SynthConfig, source: str, records: list[_VideoRecord]) -> dict[str, Any]:
    """The YouTube-VIS JSON: instance ids count up over the split in video order (from 1)."""
    videos, annotations = [], []
    for video_id, record in enumerate(records, start=1):
        videos.append({"id": video_id, "name": record.name, "width": config.width, "height": config.height,
                       "length": len(record.file_names), "file_names": record.file_names})
        for track in record.tracks:
            annotations.append({"id": len(annotations) + 1, "video_id": video_id, "category_id": track.category_id,
                                "iscrowd": 0, "height": config.height, "width": config.width,
                                "segmentations": track.segmentations, "areas": track.areas, "bboxes": track.bboxes})
    info = {"description": "vpp synth: moving textured shapes over photographs, exact ground truth",
            "generator": "vppcli.synth", "generator_version": GENERATOR_VERSION, "vppcli_version": __version__,
            "split": config.split, "seed": config.seed, "seed_rule": SEED_RULE, "knobs": config.knobs(),
            "backgrounds": source, "photos": f"scikit-image {photos_version()}" if source == "photos" else None,
            "absent_below": {"pixels": MIN_VISIBLE_PIXELS, "fraction_of_object": MIN_VISIBLE_FRACTION}}
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES, start=1)]
    return {"info": info, "licenses": [], "videos": videos, "categories": categories, "annotations": annotations}


def _make_video(job: _Job) -> _VideoRecord:
    """Render one video, write its frames (and mp4), return its ground truth."""
    config = job.config
    name = video_name(config.split, job.index)
    video = build_video(config, job.index, job.source)
    folder = job.directory / "JPEGImages" / name
    tracks = [_Track(CATEGORIES.index(category) + 1, [], [], []) for category in video.category_names]
    file_names = []
    encoder = None
    try:
        folder.mkdir(parents=True)
        if job.mp4:
            (job.directory / "videos").mkdir(exist_ok=True)
            path = job.directory / "videos" / f"{name}.mp4"
            encoder = make_encoder("auto", path, path, config.width, config.height, MP4_FPS)
        for t, frame in enumerate(render_frames(video, config)):
            file_names.append(f"{name}/{t:05d}.jpg")
            _write_jpeg(folder / f"{t:05d}.jpg", frame.image, config.jpeg_quality)
            if encoder is not None:
                encoder.write(frame.image)
            _append_ground_truth(tracks, frame.masks)
        if encoder is not None:
            encoder.finish()
            encoder = None
    except OSError as error:
        raise OutputError(f"cannot write video {name} in {job.directory}: {error.strerror or error}") from error
    finally:
        if encoder is not None:
            encoder.kill()
    # An object that never showed enough of itself (e.g. entered too late) is not an instance.
    return _VideoRecord(name, file_names, [t for t in tracks if any(s is not None for s in t.segmentations)])


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"JPEG encoding failed for {path.name}")
    path.write_bytes(data.tobytes())


def _append_ground_truth(tracks: list[_Track], masks: tuple[np.ndarray | None, ...]) -> None:
    present = [i for i, mask in enumerate(masks) if mask is not None]
    encoded = dict(zip(present, _encode([masks[i] for i in present])))
    for i, track in enumerate(tracks):
        mask = masks[i]
        if mask is None:
            track.segmentations.append(None)
            track.areas.append(None)
            track.bboxes.append(None)
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        track.segmentations.append(encoded[i])
        track.areas.append(int(mask.sum()))
        track.bboxes.append([int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)])


def _encode(masks: list[np.ndarray]) -> list[dict[str, Any]]:
    """Compressed RLE ({"size": [H, W], "counts": str}) of [H, W] bool masks."""
    if not masks:
        return []
    # pycocotools reads [H, W, M] uint8 in column-major order.
    encoded = mask_utils.encode(np.asfortranarray(np.stack(masks, axis=-1).view(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in encoded]


@contextlib.contextmanager
def _video_mapper(workers: int) -> Iterator[Callable[[Iterable[_Job]], Iterator[_VideoRecord]]]:
    """An ordered map over jobs: in this process for one worker, else on a pool of spawned
    processes (fork is unsafe with the threads torch and rich start)."""
    if workers == 1:
        # One OpenCV thread, as in the workers: frames are small, and a thread pool started
        # here would hang a later fork (e.g. a DataLoader's workers) that reconfigures OpenCV.
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            yield lambda jobs: map(_make_video, jobs)
        finally:
            cv2.setNumThreads(previous)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    try:
        yield lambda jobs: pool.map(_make_video, jobs)
    finally:
        # Queued videos are dropped; running ones take well under a second to finish.
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker() -> None:
    """Ctrl-C is the parent's to handle (it cancels the rest); one thread per process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def _remove_stale_temporaries(out_dir: Path, split: str) -> None:
    """Remove what an earlier run that crashed (its process is gone) left next to the split."""
    for path in [*out_dir.glob(f".{split}.tmp-*"), *out_dir.glob(f".{split}.old-*")]:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an interrupted run", path)
            remove_quietly(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
