"""The `vpp eval` loop: stream every video of a split through the model, keep each video's
predictions as soon as it finishes, and merge them into the server's `results.json`/`results.zip`.

Layout of `output_dir`:
    predictions/run.json        settings that change predictions (a resumed run must match them)
    predictions/<video_id>.json one finished video: its result entries and efficiency sums
    results.json, results.zip   the merged submission (entries in ascending video id)

Per-video files are written atomically, so an interrupted run leaves only finished videos and
`--resume` skips them. Sharding splits the videos (ascending id, round robin) over the ranks of a
process group (`vppcli.distributed`: started by `torchrun`, or by `run_sharded`); rank 0 (or the
launching process) merges from the per-video files, so the merged output is the same as one
process's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vppcli import __version__
from vppcli.config import preset
from vppcli.distributed import Rank, barrier, env_rank, process_group, rank_device, spawn
from vppcli.errors import InputError, OutputError, UsageError
from vppcli.evaluation.dataset import Category, ClassMapping, YtvisDataset, match_classes, read_json, write_json
from vppcli.hardware import resolve_dtype
from vppcli.efficiency import EfficiencyMeter, EfficiencyReport, merged
from vppcli.evaluation.metric import listing
from vppcli.model.rovis import VppModel, build_model
from vppcli.outputs.atomic import AtomicFile, ensure_output_dir, remove_quietly
from vppcli.outputs.ytvis import YtvisCollector, write_results
from vppcli.profiling import peak_memory
from vppcli.segmenter import Segmenter
from vppcli.video import ImageSequenceSource

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
RUN_FILE = "run.json"
# YouTube-VIS frames are every 5th frame of 30 fps clips; only used for timestamps.
YTVIS_FPS = 6.0

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint (`weights`: path or registered name) or a preset with random weights; neither
    means the bundled default model, named explicitly here so that a resumed run compares names."""

    weights: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and self.preset is not None:
            raise UsageError("give either --weights or --preset, not both")
        if self.weights is None and self.preset is None:
            from vppcli.checkpoints.registry import default_weights

            object.__setattr__(self, "weights", default_weights())


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides the predictions, plus where to compute them."""

    model: ModelSpec
    keep_ratio: float | None = None
    long_side: int | None = None
    score_threshold: float = 0.0
    dtype: str = "fp32"  # fp32, bf16 or auto (bf16 where it is native)
    allow_class_mismatch: bool = False
    device: str = "cpu"  # cpu, cuda or auto; with several processes each takes cuda:LOCAL_RANK
    threads: int | None = None
    temporal_prior: bool = True  # False: image-based pruning, the paper's baseline

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share (device and threads may change between runs)."""
        fields = dataclasses.asdict(self)
        for name in ("device", "threads"):
            fields.pop(name)
        return {**fields.pop("model"), **fields}


@dataclass(frozen=True)
class VideoTask:
    video_id: int
    height: int
    width: int
    files: tuple[Path, ...]


@dataclass(frozen=True)
class EvalJob:
    """One evaluation run: settings, the dataset's categories, the videos (ascending id) and
    where the outputs go. Picklable, so worker processes get it whole."""

    settings: RunSettings
    annotation_file: Path
    categories: tuple[Category, ...]
    tasks: tuple[VideoTask, ...]
    output_dir: Path
    resume: bool = False
    overwrite: bool = False

    @property
    def predictions_dir(self) -> Path:
        return self.output_dir / PREDICTIONS_DIR

    def fingerprint(self) -> dict[str, Any]:
        return {"annotations": str(self.annotation_file.resolve()), **self.settings.fingerprint(),
                "vppcli": __version__}


@dataclass(frozen=True)
class RunOutcome:
    """The merged run: result entries (ascending video id), efficiency, files written, and how
    many videos came from an earlier run (`--resume`)."""

    results: list[dict[str, Any]]
    efficiency: EfficiencyReport
    files: tuple[Path, ...]
    resumed: int


def make_job(dataset: YtvisDataset, video_ids: Sequence[int], settings: RunSettings, output_dir: Path,
             resume: bool = False, overwrite: bool = False) -> EvalJob:
    by_id = {v.id: v for v in dataset.videos}
    tasks = tuple(VideoTask(i, by_id[i].height, by_id[i].width, dataset.frame_files(by_id[i]))
                  for i in sorted(video_ids))
    if not tasks:
        raise UsageError(f"no videos to evaluate in {dataset.annotation_file}")
    return EvalJob(settings, dataset.annotation_file, dataset.categories, tasks, output_dir, resume, overwrite)


def load_eval_model(settings: RunSettings, categories: Sequence[Category],
                    device: torch.device) -> tuple[VppModel, ClassMapping]:
    """The model and how its labels map to the dataset's categories.

    A preset (random weights) is built with the dataset's classes, seeded so that every process
    of a sharded run holds the same weights; a checkpoint keeps its classes (a mismatch is refused
    unless `allow_class_mismatch`).
    """
    spec = settings.model
    if spec.preset is not None:
        config = preset(spec.preset)
        config = config.replace(
            class_names=tuple(c.name for c in categories), category_ids=tuple(c.id for c in categories),
            head=dataclasses.replace(config.head, num_classes=len(categories)),
        )
        model = build_model(config, seed=0)
    else:
        from vppcli.checkpoints import load_model

        model = load_model(spec.weights, device=device)
    return model, match_classes(model.config, categories, settings.allow_class_mismatch)


def run(job: EvalJob, progress: Progress | None = None,
        loaded: tuple[VppModel, ClassMapping] | None = None) -> RunOutcome | None:
    """Evaluate in this process, or as one rank of a `torchrun` group (from its environment).

    Returns the merged outcome on rank 0 and None on the other ranks. `progress(done, total)` is
    called on rank 0 after each of its videos; `loaded` reuses a model already loaded for checks.
    """
    rank = env_rank()
    with process_group(rank):
        resumed = prepare_output(job) if rank.is_root else 0
        barrier(rank)  # the other ranks write only once rank 0 has checked the directory
        _process_shard(job, rank, progress if rank.is_root else None, loaded)
        barrier(rank)
        return collect(job, resumed) if rank.is_root else None


def run_in_process(job: EvalJob, loaded: tuple[VppModel, ClassMapping] | None = None,
                   progress: Progress | None = None) -> RunOutcome:
    """Evaluate every video in this process, whatever a torchrun environment says (validation
    inside one rank of a training run)."""
    resumed = prepare_output(job)
    _process_shard(job, Rank(), progress, loaded)
    return collect(job, resumed)


def run_sharded(job: EvalJob, shards: int, progress: Progress | None = None) -> RunOutcome:
    """Evaluate with `shards` worker processes (a local gloo group on 127.0.0.1) and merge."""
    resumed = prepare_output(job)

    def poll() -> None:
        if progress is not None:
            progress(_count_done(job), len(job.tasks))

    spawn(_worker, (job,), shards, job.settings.threads, poll)  # Ctrl-C: finished videos are kept
    if progress is not None:
        progress(len(job.tasks), len(job.tasks))
    return collect(job, resumed)


def prepare_output(job: EvalJob) -> int:
    """Check the output directory against `resume`/`overwrite` and record the run's settings.
    Returns how many videos an earlier run already finished."""
    directory = job.predictions_dir
    ensure_output_dir(directory)
    run_file = directory / RUN_FILE
    earlier = [p for p in directory.glob("*.json") if p.name != RUN_FILE]
    fingerprint = job.fingerprint()
    if job.resume:
        previous = _previous_settings(run_file)
        if previous is not None and previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            raise UsageError("--resume: " + "; ".join(
                f"{k} was {previous.get(k)!r}, now {fingerprint.get(k)!r}" for k in changed
            ) + f"; use the earlier settings or another --output-dir than {job.output_dir}")
    elif earlier:  # a run record alone (a run that crashed before its first video) holds nothing to lose
        if not job.overwrite:
            raise UsageError(f"{directory} holds predictions of an earlier run; pass --resume to continue it "
                             "or --overwrite to start again")
        for path in [*earlier, run_file]:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise OutputError(f"--overwrite: cannot remove {path}: {error.strerror or error}") from None
    for leftover in directory.glob(".*.tmp-*"):  # temporaries of a run that was killed mid-write
        remove_quietly(leftover)
    write_json(run_file, fingerprint)
    return _count_done(job)


def _previous_settings(run_file: Path) -> dict[str, Any] | None:
    """The settings an earlier run recorded, or None if it recorded none; read only for --resume,
    so that a damaged file never stands in the way of --overwrite."""
    if not run_file.exists():
        return None
    try:
        previous = read_json(run_file)
    except InputError as error:
        raise InputError(f"--resume: {error}; pass --overwrite to start again") from None
    if not isinstance(previous, dict):
        raise InputError(f"--resume: {run_file} is not a run record (a JSON object); pass --overwrite to start again")
    return previous


def collect(job: EvalJob, resumed: int = 0) -> RunOutcome:
    """Merge the per-video files (ascending video id) into results.json and results.zip."""
    results: list[dict[str, Any]] = []
    meters: list[EfficiencyMeter] = []
    missing: list[int] = []
    for task in job.tasks:
        record = _read_record(job, task)
        if record is None:
            missing.append(task.video_id)
            continue
        results.extend(record["results"])
        meters.append(EfficiencyMeter.from_dict(record["efficiency"]))
    if missing:
        raise OutputError(f"no predictions for video(s) {listing(missing)} in "
                          f"{job.predictions_dir}; run again with --resume")
    results_file = write_results(iter(results), job.output_dir / "results.json")
    zip_file = job.output_dir / "results.zip"
    with AtomicFile(zip_file, "wb", suffix=".zip") as handle:
        # The server wants results.json at the root of the archive, not in a folder.
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(results_file, arcname="results.json")
    return RunOutcome(results, merged(meters).report(), (results_file, zip_file), resumed)


def _worker(rank: Rank, job: EvalJob) -> None:
    """One process of `run_sharded`."""
    _process_shard(job, rank, None, None)


def _process_shard(job: EvalJob, rank: Rank, progress: Progress | None,
                   loaded: tuple[VppModel, ClassMapping] | None) -> None:
    shard = job.tasks[rank.rank::rank.world]
    tasks = [task for task in shard if _read_record(job, task) is None]  # the rest is done (--resume)
    if progress is not None:
        progress(len(shard) - len(tasks), len(shard))
    if not tasks:
        return
    settings = job.settings
    device = rank_device(settings.device, rank.local_rank)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    model, mapping = loaded or load_eval_model(settings, job.categories, device)
    segmenter = Segmenter(model, keep_ratio=settings.keep_ratio, score_threshold=settings.score_threshold,
                          temporal_prior=settings.temporal_prior,
                          classes=mapping.kept_classes, device=device,
                          dtype=resolve_dtype(settings.dtype, device),
                          long_side=settings.long_side)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    known = {c.id for c in job.categories}
    for done, task in enumerate(tasks, start=len(shard) - len(tasks) + 1):
        record = _run_video(segmenter, task, mapping, known, device)
        write_json(job.predictions_dir / f"{task.video_id}.json", record)
        log.info("video %d: %d frames, %d tracks (%d/%d of rank %d)", task.video_id, record["frames"],
                 len(record["results"]), done, len(shard), rank.rank)
        if progress is not None:
            progress(done, len(shard))


def _run_video(segmenter: Segmenter, task: VideoTask, mapping: ClassMapping, known: set[int],
               device: torch.device) -> dict[str, Any]:
    source = ImageSequenceSource(task.files, str(task.video_id), YTVIS_FPS)
    if (source.info.height, source.info.width) != (task.height, task.width):
        raise InputError(f"{task.files[0]} is {source.info.width}x{source.info.height}, the annotation file says "
                         f"{task.width}x{task.height} for video {task.video_id}; are --images and the annotations "
                         "of the same split?")
    collector = YtvisCollector(task.video_id, mapping.category_ids)
    meter = EfficiencyMeter()
    config = segmenter.model.config
    try:
        started = time.perf_counter()
        for frame in segmenter.stream(source):
            collector.add(frame.instances)
            if frame.instances.stats is not None:
                meter.add_frame(config, frame.instances.stats)
        meter.seconds = time.perf_counter() - started
        results = [entry for entry in collector.iter_results() if entry["category_id"] in known]
        frames = collector.num_frames
    finally:
        collector.close()
    meter.peak_memory_mb, meter.peak_memory_kind = peak_memory(device)
    return {"video_id": task.video_id, "frames": frames, "results": results, "efficiency": meter.to_dict()}


def _read_record(job: EvalJob, task: VideoTask) -> dict[str, Any] | None:
    """A finished video's file, or None if absent or not from a complete run of this video."""
    path = job.predictions_dir / f"{task.video_id}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        EfficiencyMeter.from_dict(record["efficiency"])
        complete = record["video_id"] == task.video_id and record["frames"] == len(task.files) \
            and isinstance(record["results"], list)
    except (OSError, ValueError, KeyError, TypeError):
        complete = False
    if not complete:
        log.warning("ignoring unusable %s; the video is run again", path)
        return None
    return record


def _count_done(job: EvalJob) -> int:
    present = {p.stem for p in job.predictions_dir.glob("*.json")}
    return sum(str(task.video_id) in present for task in job.tasks)


__all__ = [
    "EvalJob", "ModelSpec", "RunOutcome", "RunSettings", "VideoTask", "collect", "load_eval_model", "make_job",
    "prepare_output", "run", "run_sharded",
]
