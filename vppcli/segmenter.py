"""`Segmenter`: the Python API behind `vpp segment` (and `vpp eval`).

    segmenter = Segmenter.from_weights("model.safetensors", keep_ratio=0.45)
    result = segmenter.segment("clip.mp4", formats=("overlay", "ytvis"), output_dir="runs/segment/clip")
    for item in segmenter.stream("clip.mp4"):          # or consume frames yourself
        print(item.index, item.timestamp, len(item.instances))

Each `stream`/`segment` call is one video with a fresh `VideoState`; the segmenter itself keeps
no per-video state, so one instance serves any number of videos in sequence.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from vppcli.checkpoints.registry import DEFAULT_MODEL
from vppcli.config import VppConfig
from vppcli.efficiency import EfficiencyMeter
from vppcli.errors import InputError, ResourceError, UsageError
from vppcli.inference import VideoPredictor
from vppcli.limits import check_keep_ratio
from vppcli.model.rovis import VppModel
from vppcli.model.temporal_reuse import TemporalReuse
from vppcli.model.tracker import TrackAccumulator
from vppcli.outputs import OverlayWriter, finish_and_commit, needs_pruning_masks, open_writers, output_names
from vppcli.outputs.base import FrameRecord, OutputWriter, VideoMeta
from vppcli.outputs.run_record import replace_run
from vppcli.results import FrameInstances, FrameStats, TrackSummary
from vppcli.track_ids import DenseTrackIds
from vppcli.video import FrameSelection, FrameSource, open_source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentedFrame:
    """index/timestamp: position of the frame in the source; image: [H, W, 3] uint8 RGB;
    instances: tracked instances on the CPU, after the score/class filters; file: the source
    image's name for frame directories and images (`Frame.file`), else None."""

    index: int
    timestamp: float
    image: np.ndarray
    instances: FrameInstances
    file: str | None = None


@dataclass
class VideoResult:
    """What one video run produced: counts, efficiency and the files written."""

    name: str
    source: str
    video_id: int = 1
    efficiency: EfficiencyMeter = field(default_factory=EfficiencyMeter)
    tracks: list[TrackSummary] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    overlay_encoder: str | None = None  # e.g. "libx264 yuv420p (ffmpeg at ...)" or "mp4v (OpenCV)"
    # The first selected frame that could not be decoded, when the video ended there (`frames` were).
    ended_at: int | None = None

    @property
    def frames(self) -> int:
        return self.efficiency.frames

    @property
    def seconds(self) -> float:
        """Wall time of the video, decoding and writing included."""
        return self.efficiency.seconds

    @property
    def fps(self) -> float:
        return self.efficiency.report().fps

    @property
    def keep_ratio(self) -> float:
        """Realised patch keep ratio (PKR), averaged over the processed frames."""
        return self.efficiency.report().keep_ratio

    @property
    def gflops_per_frame(self) -> float:
        return self.efficiency.report().gflops_per_frame["total"]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "video_id": self.video_id,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 3),
            "keep_ratio": round(self.keep_ratio, 4),
            "gflops_per_frame": round(self.gflops_per_frame, 3),
            "tracks": len(self.tracks),
            "outputs": [str(p) for p in self.outputs],
            "overlay_encoder": self.overlay_encoder,
            "ended_at_frame": self.ended_at,
        }


class Segmenter:
    """Segments, classifies and tracks the objects of videos with a VPP model.

    Args:
        model: the network (see `vppcli.checkpoints.load_model` or `build_model`).
        keep_ratio: None = prune as trained; r in (0, 1] = exact patch keep ratio r (1 = dense).
        score_threshold: drop instances scoring below this from the outputs (tracking still sees
            them, so ids stay stable).
        classes: keep only these class names in the outputs (None = all).
        device / dtype / long_side / reference_noise / seed: see `VideoPredictor`.
        record_pruning: every frame's per-block keep masks in `instances.stats.pruning` (the
            pruning formats turn this on for their video by themselves).
        temporal_prior / reuse: see `VideoPredictor` (reuse: sparse temporal reuse in the pixel
            decoder, None = off).
    """

    def __init__(self, model: VppModel, *, keep_ratio: float | None = None, score_threshold: float = 0.0,
                 classes: Sequence[str] | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, long_side: int | None = None,
                 reference_noise: bool = False, seed: int = 0, record_pruning: bool = False,
                 temporal_prior: bool = True, reuse: TemporalReuse | None = None) -> None:
        check_keep_ratio(keep_ratio, model.config)
        if not 0.0 <= score_threshold <= 1.0:
            raise UsageError(f"--score-threshold must be in [0, 1], got {score_threshold}")
        try:
            self.predictor = VideoPredictor(model, keep_ratio, reference_noise, seed, device, dtype, long_side,
                                            record_pruning, temporal_prior, reuse)
        except ValueError as error:
            raise UsageError(str(error)) from None
        self.score_threshold = score_threshold
        self.class_labels = self._labels_of(classes)

    @classmethod
    def from_weights(cls, weights: str | Path = DEFAULT_MODEL, **options: object) -> Segmenter:
        """Load a checkpoint (path or registered name; by default the bundled model) and wrap it."""
        from vppcli.checkpoints import load_model

        device = options.get("device", "cpu")
        return cls(load_model(weights, device=device), **options)  # type: ignore[arg-type]

    @property
    def model(self) -> VppModel:
        return self.predictor.model

    @property
    def config(self) -> VppConfig:
        """The model's config with this segmenter's input size applied."""
        return self.predictor.config

    def _labels_of(self, classes: Sequence[str] | None) -> torch.Tensor | None:
        if classes is None:
            return None
        names = self.config.class_names
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise UsageError(f"unknown class name(s) {', '.join(unknown)}; the model knows: {', '.join(names)}")
        return torch.tensor(sorted({names.index(c) for c in classes}), dtype=torch.int64)

    def _filtered(self, instances: FrameInstances) -> FrameInstances:
        keep = instances.scores >= self.score_threshold
        if self.class_labels is not None:
            keep &= torch.isin(instances.labels, self.class_labels)
        if bool(keep.all()):
            return instances
        return FrameInstances(
            instances.frame_index, instances.track_ids[keep], instances.labels[keep], instances.scores[keep],
            instances.masks[keep], instances.boxes[keep], instances.stats,
        )

    def stream(self, source: str | Path | FrameSource, selection: FrameSelection = FrameSelection(),
               *, record_pruning: bool | None = None) -> Iterator[SegmentedFrame]:
        """Segment the selected frames of one video, lazily, one frame at a time.

        `record_pruning` overrides the segmenter's setting for this video.
        """
        with _opened(source) as frames_source:
            state = self.predictor.new_video(record_pruning)
            track_ids = DenseTrackIds()
            for frame in frames_source.frames(selection):
                try:
                    instances = self.predictor.step(state, frame.image).cpu()
                except RuntimeError as error:  # torch.OutOfMemoryError is one
                    if not _is_out_of_memory(error):
                        raise
                    raise ResourceError(
                        f"out of memory at frame {frame.index} of {frames_source.info.path} "
                        f"({str(error).splitlines()[0][:120]}); try a smaller --size, --dtype bf16 or another --device"
                    ) from None
                yield SegmentedFrame(frame.index, frame.timestamp, frame.image,
                                     track_ids.apply(self._filtered(instances)), frame.file)

    def segment(self, source: str | Path | FrameSource, *, formats: Sequence[str] = (),
                output_dir: str | Path | None = None, selection: FrameSelection = FrameSelection(),
                video_id: int = 1, name: str | None = None, stream: TextIO | None = None,
                on_frame: Callable[[SegmentedFrame], None] | None = None) -> VideoResult:
        """Segment one video and write it in `formats` into `output_dir`.

        Files appear only when the whole video went through, all formats together; on any error
        or interruption every writer is aborted and nothing is left behind. The outputs replace
        the previous run's in `output_dir` whole: its other formats are removed after the commit
        (only files vppcli recorded writing there, see `outputs.run_record`). `name` replaces the source's name in the
        outputs; `stream` receives the jsonl format (default: stdout); `on_frame` is called after
        each frame (progress bars).
        """
        with _opened(source) as frames_source:
            return self._segment(frames_source, formats, output_dir, selection, video_id,
                                 name or frames_source.info.name, stream or sys.stdout, on_frame)

    def _segment(self, source: FrameSource, formats: Sequence[str], output_dir: str | Path | None,
                 selection: FrameSelection, video_id: int, name: str, stream: TextIO,
                 on_frame: Callable[[SegmentedFrame], None] | None) -> VideoResult:
        info = source.info
        if formats and output_dir is None and any(f != "jsonl" for f in formats):
            raise UsageError("an output directory is needed to write files")
        meta = VideoMeta(name, info.path, info.height, info.width, info.fps / selection.stride, video_id,
                         self.config.class_names, self.config.category_ids, still=info.backend == "image")
        record_pruning = needs_pruning_masks(formats)
        if record_pruning and not self.config.pruning.enabled:
            logger.warning("the model does not prune (a dense model): every pruning stage shows all patches kept")
        writers: list[OutputWriter] = open_writers(formats, meta, Path(output_dir or "."), stream) if formats else []
        result = VideoResult(name, info.path, video_id)
        result.overlay_encoder = next((w.encoder for w in writers if isinstance(w, OverlayWriter)), None)
        tracks = TrackAccumulator()
        started = time.perf_counter()
        try:
            for item in self.stream(source, selection, record_pruning=record_pruning or None):
                record = FrameRecord(item.index, item.timestamp, item.image, item.instances, item.file)
                for writer in writers:
                    writer.write_frame(record)
                tracks.add(item.instances)
                result.efficiency.add_frame(self.config, _stats(item.instances))
                if on_frame is not None:
                    on_frame(item)
            result.efficiency.seconds = time.perf_counter() - started
            result.ended_at = source.ended_at
            if result.frames == 0 and result.ended_at is not None:
                raise InputError(f"decode error at frame {result.ended_at} of {info.path} (truncated or corrupt video)")
            if result.frames == 0:
                raise UsageError(f"{info.path}: the frame selection is empty (the source has {info.num_frames} frames)")
            result.outputs = finish_and_commit(writers)
            if output_dir is not None and any(f != "jsonl" for f in formats):
                replace_run(Path(output_dir), result.outputs, output_names())
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        result.tracks = tracks.summaries()
        return result


def _is_out_of_memory(error: RuntimeError) -> bool:
    """An allocation failure: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


@contextlib.contextmanager
def _opened(source: str | Path | FrameSource) -> Iterator[FrameSource]:
    """A path is opened (and closed afterwards); a source the caller opened stays the caller's."""
    if isinstance(source, FrameSource):
        yield source
        return
    with open_source(source) as opened:
        yield opened


def _stats(instances: FrameInstances) -> FrameStats:
    if instances.stats is None:  # `VideoPredictor.step` always sets them
        raise RuntimeError("frame instances without efficiency stats")
    return instances.stats
