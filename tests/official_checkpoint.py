"""Synthetic checkpoints in the authors' mmengine layout, built from the vendored key lists.

The tensors are random, the keys and shapes exactly those of tests/data/keys_vpp_*.txt. The
inverse name mapping here is written independently of vppcli.model.official_keys, so that a
model "filled directly" from the official tensors is a real cross-check of the converter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from vppcli.model.rovis import VppModel

from helpers import KEY_LISTS

MAP_SM = "detector.backbone.interactions.0.matching_module."
_VPP_BLOCK_NAMES = {
    "attn.qkv.weight": "TransformerEncoderLayer.self_attn.in_proj_weight",
    "attn.qkv.bias": "TransformerEncoderLayer.self_attn.in_proj_bias",
    "attn.proj.weight": "TransformerEncoderLayer.self_attn.out_proj.weight",
    "attn.proj.bias": "TransformerEncoderLayer.self_attn.out_proj.bias",
    "mlp.fc1.weight": "TransformerEncoderLayer.linear1.weight",
    "mlp.fc1.bias": "TransformerEncoderLayer.linear1.bias",
    "mlp.fc2.weight": "TransformerEncoderLayer.linear2.weight",
    "mlp.fc2.bias": "TransformerEncoderLayer.linear2.bias",
    "norm1.weight": "TransformerEncoderLayer.norm1.weight",
    "norm1.bias": "TransformerEncoderLayer.norm1.bias",
    "norm2.weight": "TransformerEncoderLayer.norm2.weight",
    "norm2.bias": "TransformerEncoderLayer.norm2.bias",
}


def official_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (KEY_LISTS / f"keys_vpp_{variant}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            shapes[key] = tuple(json.loads(shape))
    return shapes


def random_official_state(variant: str, *, dense: bool = False, legacy_map: bool = False, seed: int = 0) -> dict[str, Tensor]:
    """Random tensors under the official names. `dense`: the dense RoVIS layout (timm block names,
    no pruning modules). `legacy_map`: the older Map-SM with `dist_scale` and no unused layers."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(variant).items():
        if dense and (key.startswith(MAP_SM) or ".selective_modules." in key):
            continue
        if legacy_map and key.startswith((MAP_SM + "init_mlp", MAP_SM + "norm_input")):
            continue
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(1234)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=generator) + 0.5
        else:
            value = torch.randn(shape, generator=generator) * 0.1
        if dense and ".TransformerEncoderLayer." in key:
            key = _timm_block_name(key)
        state[key] = value
    if legacy_map:
        state[MAP_SM + "dist_scale"] = torch.rand(34, 60, 34, 60, generator=generator)
    return state


def mmengine_checkpoint(state: dict[str, Tensor], *, cfg: str | None = None, experiment_name: str | None = None,
                        classes: tuple[str, ...] | None = None) -> dict:
    """The layout mmengine's CheckpointHook writes (meta + state_dict + training state)."""
    meta: dict = {"epoch": 6, "iter": 12345, "mmengine_version": "0.10.7", "seed": 42, "time": "20240101_000000"}
    if cfg is not None:
        meta["cfg"] = cfg
    if experiment_name is not None:
        meta["experiment_name"] = experiment_name
    if classes is not None:
        meta["dataset_meta"] = {"classes": classes}
    return {"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}}


def config_text(map_keep_ratio: float, selective: tuple[float, ...], work_dir: str = "output/run") -> str:
    """A training config as mmengine's pretty_text would store it (only the fields that matter)."""
    ratios = ", ".join(str(r) for r in selective)
    return (
        "model = dict(\n    type='ROVIS',\n    detector=dict(\n        type='Mask2Former',\n"
        "        backbone=dict(\n            type='SelectiveViTAdapter',\n            select_module_ids=[3, 6, 9],\n"
        f"            selective_module_kr=[\n                {ratios}\n            ],\n"
        "            matching_module=dict(\n                type='Mapping_Selective_Module',\n"
        f"                in_dim=192,\n                keep_ratio={map_keep_ratio},\n                tau_matching=10),\n"
        "        )))\n"
        "test_pipeline = [dict(type='Resize', scale=(960, 960), keep_ratio=True)]\n"
        f"work_dir = '{work_dir}'\n"
    )


def ours_to_official(key: str, dense: bool = False) -> str:
    """vppcli name -> official name (independent of vppcli.model.official_keys)."""
    block = re.match(r"^backbone\.blocks\.(\d+)\.(.+)$", key)
    if block and not dense:
        return f"detector.backbone.blocks.{block.group(1)}.{_VPP_BLOCK_NAMES[block.group(2)]}"
    key = key.replace("backbone.map_selective_module.norm.", "backbone.interactions.0.matching_module.norm_selector.")
    key = key.replace("backbone.map_selective_module.mlp.", "backbone.interactions.0.matching_module.selector.")
    if key.startswith("head."):
        key = key.replace(".cross_attn.", ".attentions.0.attn.")
        key = re.sub(r"(transformer_decoder\.layers\.\d+)\.self_attn\.", r"\1.attentions.1.attn.", key)
        key = re.sub(r"(encoder\.layers\.\d+)\.self_attn\.", r"\1.attentions.0.", key)
        key = key.replace(".ffn.fc1.", ".ffns.0.layers.0.0.").replace(".ffn.fc2.", ".ffns.0.layers.1.")
        key = re.sub(r"(layers\.\d+)\.norm(\d)\.", lambda m: f"{m.group(1)}.norms.{int(m.group(2)) - 1}.", key)
        return "detector.panoptic_head." + key[len("head."):]
    return "detector." + key


def fill_directly(model: VppModel, state: dict[str, Tensor], dense: bool = False) -> VppModel:
    """Copy the official tensors into `model`, parameter by parameter."""
    with torch.no_grad():
        for name, target in model.state_dict().items():
            target.copy_(state[ours_to_official(name, dense)])
    return model


def save_official(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


def _timm_block_name(key: str) -> str:
    for ours, official in _VPP_BLOCK_NAMES.items():
        if key.endswith(official):
            return key[: -len(official)] + ours
    raise KeyError(key)
