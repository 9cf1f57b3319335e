"""vppcli: fast video instance segmentation with Video Patch Pruning."""

__version__ = "0.1.0.dev0"
