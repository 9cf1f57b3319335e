"""Optimiser, learning-rate schedule and frozen parts.

The schedule is a pure function of the step (no scheduler state to save): linear warm-up, then
the reference's single step decay by 10.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vppcli.errors import UsageError
from vppcli.model.rovis import VppModel
from vppcli.training.config import TrainConfig

log = logging.getLogger(__name__)

# Parameters trained at the full LR even inside the backbone: VPP's own modules start from scratch
# when a dense model is fine-tuned, and the level embeddings (reference-architecture.md 4.5).
_FULL_LR = ("selective_modules", "map_selective_module", "level_embed")
_NO_DECAY = ("query_embed", "query_feat", "level_embed")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)

FREEZABLE = ("backbone", "vit", "adapter", "pixel_decoder", "decoder", "head")


def _in_part(name: str, part: str) -> bool:
    backbone = name.startswith("backbone.")
    vpp_module = any(key in name for key in ("selective_modules", "map_selective_module"))
    if part == "backbone":  # everything but VPP's selective modules, which are what the VPP stage learns
        return backbone and not vpp_module
    if part == "vit":
        return name.startswith(("backbone.patch_embed", "backbone.pos_embed", "backbone.blocks."))
    if part == "adapter":
        return backbone and not vpp_module and not _in_part(name, "vit")
    if part == "pixel_decoder":
        return name.startswith("head.pixel_decoder.")
    if part == "decoder":
        return name.startswith("head.") and not name.startswith("head.pixel_decoder.")
    if part == "head":
        return name.startswith("head.")
    raise UsageError(f"--freeze: unknown part {part!r}; choose from {', '.join(FREEZABLE)}")


def apply_freeze(model: VppModel, parts: tuple[str, ...]) -> int:
    """Stop gradients for the named parts; returns the number of frozen parameters."""
    frozen = 0
    for name, param in model.named_parameters():
        if any(_in_part(name, part) for part in parts):
            param.requires_grad_(False)
            frozen += param.numel()
    if parts and not frozen:
        raise UsageError(f"--freeze {','.join(parts)} matches no parameter of this model")
    return frozen


def parameter_groups(model: VppModel, config: TrainConfig) -> list[dict]:
    """AdamW groups by (LR multiplier, weight decay): backbone at `backbone_lr_mult`, no decay on
    norms and query/level embeddings."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult = config.backbone_lr_mult if name.startswith("backbone.") and not any(
            key in name for key in _FULL_LR) else 1.0
        decay = 0.0 if id(param) in norm_params or any(key in name for key in _NO_DECAY) else config.weight_decay
        groups.setdefault((lr_mult, decay), []).append(param)
    if not groups:
        raise UsageError("every parameter is frozen: nothing to train")
    return [{"params": params, "lr_mult": lr_mult, "weight_decay": decay, "lr": config.lr * lr_mult}
            for (lr_mult, decay), params in sorted(groups.items())]


def build_optimizer(model: VppModel, config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Base LR at optimizer step `step` (0-based)."""
    factor = 0.1 if step >= int(config.lr_drop * config.steps) else 1.0
    if step < config.warmup_steps:
        factor *= 0.001 + 0.999 * step / config.warmup_steps
    return config.lr * factor


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
