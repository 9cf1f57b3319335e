"""vppcli: fast video instance segmentation with Video Patch Pruning (VPP)."""

from vppcli.config import VppConfig, preset
from vppcli.inference import VideoPredictor, VideoState
from vppcli.model.rovis import VppModel, build_model
from vppcli.results import FrameInstances, TrackSummary

__version__ = "0.1.0.dev0"

__all__ = [
    "FrameInstances",
    "TrackSummary",
    "VideoPredictor",
    "VideoState",
    "VppConfig",
    "VppModel",
    "build_model",
    "preset",
]
