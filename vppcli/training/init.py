"""Where a training run's weights start (`vpp train --init`), with a report of what was and was
not initialised.

Accepted sources:
- a vppcli checkpoint (`.safetensors` with vppcli metadata), e.g. the dense stage's `last.safetensors`;
- an official VPP/RoVIS `.pth` (through the converter, weights-only loading);
- a plain ViT backbone state dict in safetensors, in the timm/DeiT/DINOv2 layout
  (`blocks.N.attn.qkv.weight`, `patch_embed.proj.weight`, `pos_embed`, ...): only the ViT part
  of the backbone starts from it.

Tensors the source lacks keep the model's random init (expected when a dense model starts the VPP
stage: the selective modules are new). A different class count re-initialises the class
predictor only, as the reference does from COCO to YouTube-VIS. Any other shape difference
means another architecture and is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from vppcli.checkpoints.format import METADATA_KEY, first_line
from vppcli.errors import CheckpointError
from vppcli.model.rovis import VppModel

log = logging.getLogger(__name__)

# Re-initialised rather than refused when their shape differs (another class count).
_CLASS_HEAD = ("head.cls_embed.weight", "head.cls_embed.bias")
# Parts of a classification ViT that a segmentation backbone has no use for.
_VIT_EXTRAS = ("cls_token", "reg_token", "register_tokens", "mask_token", "norm.", "fc_norm.", "head.", "head_drop")


@dataclass(frozen=True)
class InitReport:
    source: str
    kind: str  # vppcli | official | vit
    loaded: tuple[str, ...]
    random: tuple[str, ...]  # model tensors the source did not provide (random init)
    ignored: tuple[str, ...]  # source tensors the model does not take
    reinitialised: tuple[str, ...]  # present but of another shape (class predictor only)

    def summary(self) -> str:
        total = len(self.loaded) + len(self.random) + len(self.reinitialised)
        parts = [f"initialised {len(self.loaded)} of {total} tensors from {self.source} ({self.kind})"]
        if self.random:
            parts.append(f"random: {_groups(self.random)}")
        if self.reinitialised:
            parts.append(f"re-initialised (other class count): {', '.join(self.reinitialised)}")
        if self.ignored:
            parts.append(f"ignored from the file: {_groups(self.ignored)}")
        return "; ".join(parts)


def initialise(model: VppModel, source: str | Path) -> InitReport:
    """Load `source` into `model` in place (see the module docstring for what is accepted)."""
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"--init: no such file: {path}")
    if path.suffix == ".safetensors":
        tensors, kind = _read_safetensors(path)
    else:
        tensors, kind = _read_official(path, model)
    return _load(model, tensors, str(path), kind)


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"--init: {path} is not a readable safetensors file ({first_line(error)})") from None
    if METADATA_KEY in header:
        return tensors, "vppcli"
    if any(name.endswith("attn.qkv.weight") for name in tensors):
        return _from_plain_vit(tensors), "vit"
    raise CheckpointError(f"--init: {path} is neither a vppcli checkpoint nor a ViT state dict "
                          "(timm/DeiT/DINOv2 key names)")


def _read_official(path: Path, model: VppModel) -> tuple[dict[str, Tensor], str]:
    from vppcli.checkpoints.convert import convert_official
    from vppcli.checkpoints.official import load_official

    conversion = convert_official(load_official(path), source_name=path.name, allow_partial=True)
    if conversion.config.vit.embed_dim != model.config.vit.embed_dim:
        raise CheckpointError(f"--init: {path} is a {conversion.config.name} model "
                              f"(width {conversion.config.vit.embed_dim}); this run trains width "
                              f"{model.config.vit.embed_dim}")
    return conversion.tensors, "official"


def _from_plain_vit(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm-style ViT keys -> this backbone's (the block layout is the same, timm's names)."""
    mapped: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("module.").removeprefix("model.").removeprefix("backbone.")
        # Kept under their own names, which no model tensor has, so the report lists them as ignored.
        if name.startswith(_VIT_EXTRAS) or (name.startswith("blocks.") and ".ls" in name):  # layer scale
            mapped[name] = tensor
        else:
            mapped[f"backbone.{name}"] = tensor
    return mapped


def _fit_position_embedding(found: Tensor, wanted: Tensor) -> Tensor:
    """Resize a [1, (1 +) G*G, D] position grid bicubically to the model's [1, 1 + g*g, D]."""
    dim, count = found.shape[-1], found.shape[1]
    side = int(round((wanted.shape[1] - 1) ** 0.5))
    for class_slots in (1, 0):
        source_side = int(round((count - class_slots) ** 0.5))
        if source_side * source_side == count - class_slots:
            break
    else:
        raise CheckpointError(f"--init: pos_embed of shape {list(found.shape)} is not a square grid")
    grid = found[:, class_slots:].reshape(1, source_side, source_side, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return torch.cat([wanted[:, :1].float(), grid.permute(0, 2, 3, 1).reshape(1, side * side, dim)], 1)


def _load(model: VppModel, tensors: Mapping[str, Tensor], source: str, kind: str) -> InitReport:
    expected = model.state_dict()
    usable: dict[str, Tensor] = {}
    reinitialised, mismatched = [], []
    for name in sorted(expected.keys() & tensors.keys()):
        want, got = expected[name], tensors[name]
        if name == "backbone.pos_embed" and got.shape != want.shape and got.dim() == 3 and got.shape[-1] == want.shape[-1]:
            got = _fit_position_embedding(got, want)
        if tuple(got.shape) == tuple(want.shape):
            usable[name] = got.to(want.dtype)
        elif name in _CLASS_HEAD:
            reinitialised.append(name)
        else:
            mismatched.append(f"{name}: file {list(got.shape)} vs model {list(want.shape)}")
    if mismatched:
        raise CheckpointError(f"--init: {source} is another architecture: {len(mismatched)} tensors differ in shape "
                              f"({mismatched[0]}{', ...' if len(mismatched) > 1 else ''})")
    if not usable:
        raise CheckpointError(f"--init: {source} has no tensor this model takes")
    model.load_state_dict(usable, strict=False)
    report = InitReport(
        source=source, kind=kind, loaded=tuple(sorted(usable)),
        random=tuple(sorted(expected.keys() - tensors.keys())),
        ignored=tuple(sorted(tensors.keys() - expected.keys())),
        reinitialised=tuple(reinitialised),
    )
    log.info("%s", report.summary())
    return report


def _groups(names: tuple[str, ...], limit: int = 4) -> str:
    """Tensor names summarised by module (e.g. 'backbone.selective_modules (12)')."""
    counts: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        key = ".".join(parts[:2]) if len(parts) > 2 else name
        counts[key] = counts.get(key, 0) + 1
    shown = [f"{key} ({count})" for key, count in list(counts.items())[:limit]]
    more = len(counts) - limit
    return ", ".join(shown) + (f", and {more} more modules" if more > 0 else "")
