"""Training checkpoints: the weights as an ordinary vppcli checkpoint (usable by `vpp segment`,
`vpp eval`, `--init`), and beside it the state needed to continue exactly (optimizer, step, the
training settings) in `<name>.state.pt`, loaded weights-only.

The data stream and every random draw of a step are functions of (seed, step), so no RNG or
sampler state has to be saved for a resumed run to repeat an uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vppcli.checkpoints.format import first_line, read_metadata, save_model
from vppcli.errors import CheckpointError, UsageError
from vppcli.model.rovis import VppModel
from vppcli.outputs.atomic import AtomicFile
from vppcli.training.config import TrainConfig

log = logging.getLogger(__name__)

STATE_FORMAT = 1
LAST = "last"
BEST = "best"


@dataclass(frozen=True)
class TrainingState:
    """What `--resume` restores besides the weights."""

    step: int  # optimizer steps completed
    optimizer: dict[str, Any]
    config: TrainConfig
    best_metric: float | None = None
    best_step: int | None = None


def weights_path(run_dir: Path, name: str = LAST) -> Path:
    return run_dir / f"{name}.safetensors"


def state_path(run_dir: Path, name: str = LAST) -> Path:
    return run_dir / f"{name}.state.pt"


def save(run_dir: Path, model: VppModel, state: TrainingState, dataset: str, command: str,
         input_size: tuple[int, int], name: str = LAST) -> Path:
    """Write `<name>.state.pt`, then `<name>.safetensors`, each atomically. Both carry the step,
    so a crash between the two renames is detected on resume instead of mixing two steps."""
    payload = {
        "format": STATE_FORMAT, "step": state.step, "optimizer": state.optimizer,
        "config": state.config.to_json(), "best_metric": state.best_metric, "best_step": state.best_step,
    }
    with AtomicFile(state_path(run_dir, name), "wb") as handle:
        torch.save(payload, handle)
    provenance = {
        "source": "vpp train", "step": str(state.step), "stage": state.config.stage,
        "command": command, "train_config": state.config.to_json(),
    }
    notes = f"trained with vpp train ({state.config.stage} stage, {state.step} steps)"
    return save_model(model, weights_path(run_dir, name), provenance=provenance, dataset=dataset,
                      notes=notes, input_size=input_size)


def load_state(run_dir: Path, name: str = LAST) -> TrainingState:
    """The training state of a run directory, checked against its weights file."""
    path, weights = state_path(run_dir, name), weights_path(run_dir, name)
    if not path.is_file() or not weights.is_file():
        raise UsageError(f"--resume: no checkpoint in {run_dir} (expected {weights.name} and {path.name}); "
                         "start without --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(f"--resume: {path} is damaged ({first_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"--resume: {path} is not a vppcli training state (format {STATE_FORMAT})")
    weights_step = read_metadata(weights).provenance.get("step")
    if weights_step != str(payload["step"]):
        raise CheckpointError(f"--resume: {weights.name} is from step {weights_step} but {path.name} from step "
                              f"{payload['step']} (interrupted while saving); resume from the other pair or restart")
    return TrainingState(
        step=int(payload["step"]), optimizer=payload["optimizer"],
        config=TrainConfig.from_json(payload["config"]),
        best_metric=payload.get("best_metric"), best_step=payload.get("best_step"),
    )
