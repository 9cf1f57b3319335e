"""The authors' (mmengine/mmdet) VPP checkpoints -> vppcli tensors and config. Pure: no files.

`convert_official` takes the loaded checkpoint (a dict with `state_dict` and `meta`) and returns
the tensors under vppcli's names, the `VppConfig` they belong to and a report. It detects from
tensor shapes the variant (Tiny/Small), the block style (VPP blocks or the dense checkpoints'
timm blocks), the widths of the selective modules and the Map-SM, and the class count; the
trained pruning schedule comes from the checkpoint's own config text or name, else from the
caller (`--schedule`, or the registry entry a download came from).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vppcli.checkpoints.schedules import SCHEDULES, schedule_name, schedule_values, with_schedule
from vppcli.config import YTVIS_2021_CLASSES, VppConfig, preset
from vppcli.errors import CheckpointError, UsageError
from vppcli.model.official_keys import is_reference_unused, official_to_vppcli, vppcli_to_official
from vppcli.model.rovis import build_model

log = logging.getLogger(__name__)

_PATCH_EMBED = "detector.backbone.patch_embed.proj.weight"
_VARIANTS = {192: "tiny", 384: "small"}
_VPP_BLOCKS = re.compile(r"^detector\.backbone\.blocks\.\d+\.TransformerEncoderLayer\.")
_SELECTIVE_FC1 = "detector.backbone.selective_modules.0.mlp.fc1.weight"
_MAP_PREFIX = "detector.backbone.interactions.0.matching_module."
_MAP_FC1 = _MAP_PREFIX + "selector.fc1.weight"
_DIST_SCALE = _MAP_PREFIX + "dist_scale"
_CLS_EMBED = "detector.panoptic_head.cls_embed.weight"
_DENSE_NORM_EPS = 1e-6  # the dense checkpoints' timm blocks; the VPP blocks use PyTorch's 1e-5

_KR_LIST = re.compile(r"""selective_module_kr['"]?\s*[=:]\s*[\[(]([^\])]*)[\])]""")
_MAP_DICT = re.compile(r"""matching_module['"]?\s*[=:]\s*(?:dict\(|\{)([^)}]*)[)}]""")
_MAP_KEEP = re.compile(r"""keep_ratio['"]?\s*[=:]\s*([0-9]*\.?[0-9]+)""")
_PKR_NAME = re.compile(r"(0\.55|0\.4)\s*_?PKR", re.IGNORECASE)


@dataclass(frozen=True)
class Schedule:
    """A trained pruning schedule and where it was read from."""

    map_keep_ratio: float
    selective_keep_ratios: tuple[float, ...]
    source: str

    @classmethod
    def named(cls, name: str, source: str) -> Schedule:
        map_keep_ratio, selective = schedule_values(name)
        return cls(map_keep_ratio, selective, source)

    def same_values(self, other: Schedule) -> bool:
        return (self.map_keep_ratio, self.selective_keep_ratios) == (other.map_keep_ratio, other.selective_keep_ratios)


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion found. Key names are the checkpoint's (official) names."""

    variant: str
    block_style: str  # "vpp" (TransformerEncoderLayer blocks) or "timm" (dense checkpoints)
    schedule: str  # dense | 0.55 | 0.4 | custom
    schedule_source: str
    map_module: str  # none | current | legacy (dist_scale)
    ignored: tuple[str, ...] = ()  # stored by the reference but never used; dropped
    unexpected: tuple[str, ...] = ()  # nothing in the model takes them
    missing: tuple[str, ...] = ()  # the model needs them, the checkpoint lacks them
    mismatched: tuple[str, ...] = ()  # "key: checkpoint [..] vs model [..]"
    filled: tuple[str, ...] = ()  # BatchNorm counters absent from the file, set to 0 (unused at inference)
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not (self.unexpected or self.missing or self.mismatched)

    def problems(self) -> str:
        parts = [
            f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
            for items, label in (
                (self.missing, "missing"),
                (self.unexpected, "unexpected"),
                (self.mismatched, "with a wrong shape or dtype"),
            )
            if items
        ]
        return "; ".join(parts)


@dataclass(frozen=True)
class Conversion:
    config: VppConfig
    tensors: dict[str, Tensor]  # vppcli names
    report: ConversionReport
    num_parameters: int
    missing_keys: tuple[str, ...]  # vppcli names; non-empty only for partial conversions


def split_checkpoint(checkpoint: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(state_dict, meta) of an mmengine checkpoint, or of a bare state dict (meta empty)."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        meta = checkpoint.get("meta")
        return checkpoint["state_dict"], meta if isinstance(meta, Mapping) else {}
    if isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        return checkpoint, {}
    raise CheckpointError("not an mmengine checkpoint: no `state_dict` of tensors inside")


def identify_schedule(meta: Mapping[str, Any], source_name: str = "") -> Schedule | None:
    """The schedule a checkpoint records about itself: the keep ratios in its config text (mmengine
    stores the training config as `meta['cfg']`), else a "0.55PKR"/"0.4PKR" config or file name."""
    cfg = meta.get("cfg") if isinstance(meta.get("cfg"), str) else ""
    kr_match = _KR_LIST.search(cfg)
    if kr_match:
        try:
            selective = tuple(float(v) for v in kr_match.group(1).replace("\n", " ").split(",") if v.strip())
        except ValueError:
            selective = ()
        map_match = _MAP_DICT.search(cfg)
        keep = _MAP_KEEP.search(map_match.group(1)) if map_match else None
        if selective and keep:
            return Schedule(float(keep.group(1)), selective, "checkpoint config (meta.cfg)")
        for map_ratio, known in SCHEDULES.values():
            if selective == known:
                return Schedule(map_ratio, known, "checkpoint config (meta.cfg)")
    names = [("checkpoint config (meta.cfg)", cfg), ("checkpoint meta", str(meta.get("experiment_name", ""))),
             ("file name", source_name)]  # fmt: skip
    for where, text in names:
        match = _PKR_NAME.search(text)
        if match:
            return Schedule.named(match.group(1), where)
    return None


def convert_official(
    checkpoint: Any,
    *,
    schedule: str | None = None,
    schedule_hint: str | None = None,
    source_name: str = "checkpoint",
    allow_partial: bool = False,
) -> Conversion:
    """Map an official checkpoint onto vppcli's model.

    Args:
        checkpoint: what `torch.load` returned: {"state_dict": ..., "meta": ...} or a bare state dict.
        schedule: the user's `--schedule` (a name in `SCHEDULES`); only needed when the checkpoint
            does not identify its schedule, and refused if it contradicts the checkpoint.
        schedule_hint: the schedule a registry entry expects; used when the checkpoint is silent.
        source_name: for messages and name-based schedule detection.
        allow_partial: keep what maps instead of refusing when keys are missing, left over or
            of the wrong shape; the missing ones are recorded so that loading is non-strict only.
    """
    state_dict, meta = split_checkpoint(checkpoint)
    config, block_style = _detect_architecture(state_dict, meta, source_name)
    config, chosen = _apply_schedule(config, meta, source_name, schedule, schedule_hint)
    notes = []
    if chosen is not None and schedule_hint is not None and chosen.source.startswith(("checkpoint", "file")):
        expected = Schedule.named(schedule_hint, "registry")
        if not chosen.same_values(expected):
            notes.append(f"the checkpoint's own schedule ({_describe(chosen)}) differs from the "
                         f"{schedule_hint} schedule its name suggests; the checkpoint's is used")
    if _DIST_SCALE in state_dict:
        shape = "x".join(str(s) for s in getattr(state_dict[_DIST_SCALE], "shape", ())[:2])
        notes.append(f"legacy Map-SM: its {shape} distance table (dist_scale) is ignored; the prior is computed "
                     "exactly for every input size (identical to the table at 544x960)")

    model = build_model(config, seed=0)  # only names and shapes matter; seeded: the caller's RNG stays untouched
    expected = model.state_dict()
    mapped = _map_tensors(state_dict, expected, block_style)
    missing_ours = sorted(expected.keys() - mapped.tensors.keys())
    report = ConversionReport(
        variant=config.name,
        block_style=block_style,
        schedule=schedule_name(config),
        schedule_source=chosen.source if chosen else "no pruning modules",
        map_module="none" if not config.pruning.enabled else "legacy (dist_scale)" if _DIST_SCALE in state_dict else "current",
        ignored=tuple(mapped.ignored),
        unexpected=tuple(mapped.unexpected),
        missing=tuple(vppcli_to_official(k, block_style) for k in missing_ours),
        mismatched=tuple(mapped.mismatched),
        filled=tuple(mapped.filled),
        notes=tuple(notes),
    )
    if not report.complete and not allow_partial:
        raise CheckpointError(f"{source_name}: cannot convert: {report.problems()}; "
                              "nothing was written (--allow-partial keeps what matches)")
    for note in notes:
        log.info("%s: %s", source_name, note)
    parameter_names = {name for name, _ in model.named_parameters()}
    return Conversion(
        config=config,
        tensors=mapped.tensors,
        report=report,
        num_parameters=sum(t.numel() for name, t in mapped.tensors.items() if name in parameter_names),
        missing_keys=tuple(missing_ours),
    )


@dataclass
class _Mapped:
    tensors: dict[str, Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)


def _map_tensors(state_dict: Mapping[str, Any], expected: Mapping[str, Tensor], block_style: str) -> _Mapped:
    """Sort every official entry into mapped / ignored / unexpected / mismatched."""
    mapped = _Mapped()
    for key, value in state_dict.items():
        if is_reference_unused(key):
            mapped.ignored.append(key)
            continue
        try:
            ours = official_to_vppcli(key)
        except KeyError:
            ours = ""
        if not isinstance(value, Tensor) or ours not in expected or ours in mapped.tensors:
            mapped.unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[ours].shape):
            mapped.mismatched.append(f"{key}: checkpoint {list(value.shape)} vs model {list(expected[ours].shape)}")
        elif value.is_floating_point() != expected[ours].is_floating_point():
            mapped.mismatched.append(f"{key}: checkpoint {value.dtype} vs model {expected[ours].dtype}")
        else:
            mapped.tensors[ours] = value
    for ours in sorted(expected.keys() - mapped.tensors.keys()):
        if ours.endswith(".num_batches_tracked"):  # a step counter, unused at inference
            mapped.tensors[ours] = torch.zeros((), dtype=torch.int64)
            mapped.filled.append(vppcli_to_official(ours, block_style))
    return mapped


def _detect_architecture(state_dict: Mapping[str, Any], meta: Mapping[str, Any], source_name: str) -> tuple[VppConfig, str]:
    patch = state_dict.get(_PATCH_EMBED)
    if not isinstance(patch, Tensor):
        first = next(iter(state_dict), "nothing")
        raise CheckpointError(f"{source_name}: not an official VPP/RoVIS checkpoint: no {_PATCH_EMBED} (first key: {first})")
    width = int(patch.shape[0])
    if width not in _VARIANTS:
        raise CheckpointError(f"{source_name}: embedding width {width} is neither Tiny (192) nor Small (384)")
    config = preset(_VARIANTS[width])
    block_style = "vpp" if any(_VPP_BLOCKS.match(k) for k in state_dict) else "timm"
    if block_style == "timm":
        config = config.replace(vit=dataclasses.replace(config.vit, norm_eps=_DENSE_NORM_EPS))
    pruning = config.pruning
    has_selective = any(k.startswith("detector.backbone.selective_modules.") for k in state_dict)
    has_map = any(k.startswith(_MAP_PREFIX) and not is_reference_unused(k) for k in state_dict)
    if not (has_selective or has_map):
        pruning = dataclasses.replace(pruning, enabled=False)
    if isinstance(state_dict.get(_SELECTIVE_FC1), Tensor):
        pruning = dataclasses.replace(pruning, selective_hidden_dim=int(state_dict[_SELECTIVE_FC1].shape[0]))
    if isinstance(state_dict.get(_MAP_FC1), Tensor):
        pruning = dataclasses.replace(pruning, map_hidden_dim=int(state_dict[_MAP_FC1].shape[0]))
    config = config.replace(pruning=pruning)
    cls_embed = state_dict.get(_CLS_EMBED)
    if isinstance(cls_embed, Tensor):
        config = _with_classes(config, int(cls_embed.shape[0]) - 1, meta, source_name)
    return config, block_style


def _with_classes(config: VppConfig, num_classes: int, meta: Mapping[str, Any], source_name: str) -> VppConfig:
    dataset_meta = meta.get("dataset_meta")
    names = dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None
    if isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        class_names = tuple(names)
    elif num_classes == len(YTVIS_2021_CLASSES):
        class_names = YTVIS_2021_CLASSES
    else:
        raise CheckpointError(f"{source_name}: {num_classes} classes and no class names in its meta; "
                              f"only the {len(YTVIS_2021_CLASSES)} YouTube-VIS 2021 classes are known")
    head = dataclasses.replace(config.head, num_classes=num_classes)
    return config.replace(head=head, class_names=class_names, category_ids=())


def _apply_schedule(
    config: VppConfig, meta: Mapping[str, Any], source_name: str, requested: str | None, hint: str | None
) -> tuple[VppConfig, Schedule | None]:
    if not config.pruning.enabled:
        if requested is not None:
            raise UsageError(f"{source_name} is a dense checkpoint (no pruning modules); --schedule does not apply")
        return config, None
    own = identify_schedule(meta, source_name)
    user = Schedule.named(requested, "--schedule") if requested is not None else None
    if own is not None and user is not None and not own.same_values(user):
        raise UsageError(f"--schedule {requested} contradicts the checkpoint's own schedule "
                         f"({_describe(own)}, from its {own.source})")
    chosen = own or user or (Schedule.named(hint, "registry entry") if hint is not None else None)
    if chosen is None:
        raise UsageError(f"{source_name} does not record its pruning schedule; pass --schedule "
                         f"{' or --schedule '.join(SCHEDULES)} (the authors' 0.55 and 0.4 PKR configs)")
    if len(chosen.selective_keep_ratios) != len(config.pruning.selective_blocks):
        raise CheckpointError(f"{source_name}: its schedule has {len(chosen.selective_keep_ratios)} selective "
                              f"keep ratios for {len(config.pruning.selective_blocks)} selective modules")
    return with_schedule(config, chosen.map_keep_ratio, chosen.selective_keep_ratios), chosen


def _describe(schedule: Schedule) -> str:
    values = ", ".join(f"{v:g}" for v in schedule.selective_keep_ratios)
    return f"Map-SM {schedule.map_keep_ratio:g}, selective modules {values}"

