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

def chosen_weights(weights: str | None, preset_name: str | None) -> str | None:
    """The checkpoint a command runs: `--weights`, else the bundled default model unless `--preset`."""
    if weights is not None and preset_name is not None:
        raise UsageError("give either --weights or --preset, not both")
    if weights is None and preset_name is None:
        from vppcli.checkpoints.registry import default_weights

        return default_weights()
    return weights


def model_config(weights: str | None, preset_name: str | None) -> VppConfig:
    """The config of the model `--weights`/`--preset` name (or the bundled default), without loading weights."""
    weights = chosen_weights(weights, preset_name)
    if weights is None:
        from vppcli.config import preset

        return preset(preset_name)  # type: ignore[arg-type]
    from vppcli.checkpoints.metadata import read_metadata
    from vppcli.checkpoints.registry import resolve_weights

    return read_metadata(resolve_weights(weights)).config


def load_model(weights: str | None, preset_name: str | None, device: torch.device) -> VppModel:
    """The model itself: a checkpoint's weights, or a preset's seeded random weights."""
    weights = chosen_weights(weights, preset_name)
    if weights is None:
        config = model_config(None, preset_name)
        from vppcli.model.rovis import build_model

        model = build_model(config, seed=0)  # the same random model every run
        logger.warning("--preset %s: random weights, the output is meaningless (for testing the pipeline)",
                       preset_name)
        return model
    from vppcli.checkpoints import load_model as load_checkpoint

    return load_checkpoint(weights, device=device)
