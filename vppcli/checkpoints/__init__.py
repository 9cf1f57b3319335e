"""Checkpoints: vppcli's safetensors format, conversion of the authors' VPP checkpoints, and the
registry and download of named models.

    model = load_model("vpp-tiny-pkr53")          # a registered name (cache, bundled) or a file path
    save_model(model, "mine.safetensors")
"""

from vppcli.checkpoints.convert import Conversion, ConversionReport, convert_official
from vppcli.checkpoints.download import download_weights
from vppcli.checkpoints.format import CheckpointMetadata, load_model, read_metadata, save_model
from vppcli.checkpoints.official import convert_file, load_official
from vppcli.checkpoints.registry import BUNDLED, OFFICIAL, cache_dir, resolve_weights

__all__ = [
    "BUNDLED",
    "OFFICIAL",
    "CheckpointMetadata",
    "Conversion",
    "ConversionReport",
    "cache_dir",
    "convert_file",
    "convert_official",
    "download_weights",
    "load_model",
    "load_official",
    "read_metadata",
    "resolve_weights",
    "save_model",
]
