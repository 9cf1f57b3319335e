"""The options several commands share, declared once so that they mean the same everywhere.

`-v/--verbose` and `-q/--quiet` work before and after the command name (`vpp -v segment ...`,
`vpp segment ... -v`); `--device` defaults to `auto`; `--size` takes a long side `960` or
`HEIGHTxWIDTH` wherever a network input size is taken (`vppcli.limits.parse_size`).
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Annotated

import typer

from vppcli.cli.app import Device


def _verbose(value: bool) -> bool:
    if value:
        logging.getLogger().setLevel(logging.INFO)
    return value  # click takes a callback's return value as the option's value


def _quiet(value: bool) -> bool:
    if value:  # warnings hidden too; errors still get their line
        logging.getLogger().setLevel(logging.ERROR)
    return value


class Preset(str, Enum):
    tiny = "tiny"
    small = "small"
    compact = "compact"


class Backend(str, Enum):
    auto = "auto"  # decord, else OpenCV
    decord = "decord"
    opencv = "opencv"


Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", callback=_verbose, expose_value=False, help="Log details to stderr.")]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", callback=_quiet, help="No progress and no summary on stderr (errors still are).")]
DeviceOption = Annotated[Device, typer.Option(help="Where to run: auto (CUDA if present, else CPU), cpu or cuda.")]
Threads = Annotated[int | None, typer.Option(min=1, help="CPU threads.", show_default="torch's choice")]
Size = Annotated[str | None, typer.Option(
    help="Network input: its long side (e.g. 960) or HEIGHTxWIDTH (its long side is used for videos); "
    "32 to 4096.", show_default="the model's, 960")]
KeepRatio = Annotated[float | None, typer.Option(
    help="Patch keep ratio in (1/12, 1]; omit to prune as trained, 1 = dense.", show_default="as trained")]
Weights = Annotated[str | None, typer.Option(
    help="Checkpoint file or registered name (see `vpp weights list`).",
    show_default="vpp-compact, the bundled model, where installed; not shipped yet")]
PresetOption = Annotated[Preset | None, typer.Option(
    "--preset", help="A preset architecture with random weights instead of --weights; for testing only.",
    show_default=False)]
ScoreThreshold = Annotated[float, typer.Option(min=0.0, max=1.0, help="Drop instances scoring below this.")]


def _reuse_budget(value: float | None) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"the reuse budget must be in (0, 1], got {value}")
    return value


ReuseBudget = Annotated[float | None, typer.Option(
    "--reuse", callback=_reuse_budget, metavar="BUDGET",
    help="Sparse temporal reuse in the pixel decoder: recompute at most this fraction (0 to 1] of its "
    "encoder tokens and FPN tiles per frame (those the ViT keeps, then those changed by 5 % or more, "
    "most changed first) and reuse the previous frame's elsewhere; a dense refresh every 16 frames "
    "and after a shot cut.",
    show_default="off")]
