"""vppcli: fast video instance segmentation with Video Patch Pruning (VPP)."""

from vppcli.config import VppConfig, preset
from vppcli.inference import VideoPredictor, VideoState
from vppcli.model.rovis import VppModel, build_model
from vppcli.results import FrameInstances, TrackSummary
from vppcli.segmenter import SegmentedFrame, Segmenter, VideoResult
from vppcli.video import FrameSelection, open_source

__version__ = "0.1.0.dev0"

__all__ = [
    "FrameInstances",
    "FrameSelection",
    "SegmentedFrame",
    "Segmenter",
    "TrackSummary",
    "VideoPredictor",
    "VideoState",
    "VppConfig",
    "VideoResult",
    "VppModel",
    "build_model",
    "open_source",
    "preset",
]
