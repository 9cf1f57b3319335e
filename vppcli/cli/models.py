"""Which model a command runs (`--weights` or `--preset`), resolved in two steps: the config
first (cheap: a preset, or a checkpoint's metadata), so that options are checked against it
before the weights are loaded (seconds to minutes), then the model itself."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vppcli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from vppcli.config import VppConfig
    from vppcli.model.rovis import VppModel

logger = logging.getLogger(__name__)

NO_MODEL = ("no model: pass --weights FILE_OR_NAME (see `vpp weights list`), or --preset NAME for random "
            "weights (testing only); the bundled default model is not shipped yet")


def model_config(weights: str | None, preset_name: str | None) -> VppConfig:
    """The config of the model `--weights`/`--preset` name, without loading weights."""
    if weights is not None and preset_name is not None:
        raise UsageError("give either --weights or --preset, not both")
    if preset_name is not None:
        from vppcli.config import preset

        return preset(preset_name)
    if weights is None:
        raise UsageError(NO_MODEL)
    from vppcli.checkpoints.metadata import read_metadata
    from vppcli.checkpoints.registry import resolve_weights

    return read_metadata(resolve_weights(weights)).config


def load_model(weights: str | None, preset_name: str | None, device: torch.device) -> VppModel:
    """The model itself: a checkpoint's weights, or a preset's seeded random weights."""
    config = model_config(weights, preset_name)  # refuses both or neither
    if weights is None:
        from vppcli.model.rovis import build_model

        model = build_model(config, seed=0)  # the same random model every run
        logger.warning("--preset %s: random weights, the output is meaningless (for testing the pipeline)",
                       preset_name)
        return model
    from vppcli.checkpoints import load_model as load_checkpoint

    return load_checkpoint(weights, device=device)
