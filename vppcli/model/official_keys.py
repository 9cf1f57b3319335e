"""Names of the authors' (mmdet/mmtrack) VPP checkpoints mapped onto vppcli's state_dict.

A pure function of the key, kept apart from the model (timm's `checkpoint_filter_fn` idea). The
mapping is one-to-one on every parameter that affects outputs; `REFERENCE_UNUSED` lists what
the reference stores but never uses. `vppcli_to_official` is the inverse, so that a key missing
from an official checkpoint can be named the way the user sees it in that file.
"""

from __future__ import annotations

import re
from typing import Literal

# Map-SM parameters that the reference constructs but never calls, and the legacy Map-SM's
# frozen distance table (the prior is computed exactly for every grid instead).
REFERENCE_UNUSED = (
    re.compile(r"^detector\.backbone\.interactions\.0\.matching_module\.(init_mlp|norm_input)\."),
    re.compile(r"^detector\.backbone\.interactions\.0\.matching_module\.dist_scale$"),
)

_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^detector\.backbone\.", "backbone."),
        (r"^detector\.panoptic_head\.", "head."),
        # ViT blocks: PyTorch TransformerEncoderLayer names -> timm-style names
        (r"\.TransformerEncoderLayer\.self_attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
        (r"\.TransformerEncoderLayer\.self_attn\.out_proj\.", ".attn.proj."),
        (r"\.TransformerEncoderLayer\.linear1\.", ".mlp.fc1."),
        (r"\.TransformerEncoderLayer\.linear2\.", ".mlp.fc2."),
        (r"\.TransformerEncoderLayer\.(norm[12])\.", r".\1."),
        # Map-SM moves out of the first interaction block, where the reference kept it
        (r"^backbone\.interactions\.0\.matching_module\.norm_selector\.", "backbone.map_selective_module.norm."),
        (r"^backbone\.interactions\.0\.matching_module\.selector\.", "backbone.map_selective_module.mlp."),
        # Mask2Former head: mmcv BaseTransformerLayer names -> explicit names
        (r"(transformer_decoder\.layers\.\d+)\.attentions\.0\.attn\.", r"\1.cross_attn."),
        (r"(transformer_decoder\.layers\.\d+)\.attentions\.1\.attn\.", r"\1.self_attn."),
        (r"(encoder\.layers\.\d+)\.attentions\.0\.", r"\1.self_attn."),
        (r"\.ffns\.0\.layers\.0\.0\.", ".ffn.fc1."),
        (r"\.ffns\.0\.layers\.1\.", ".ffn.fc2."),
    )
)
_NORMS = re.compile(r"\.norms\.(\d+)\.")


def is_reference_unused(key: str) -> bool:
    return any(pattern.search(key) for pattern in REFERENCE_UNUSED)


def official_to_vppcli(key: str) -> str:
    """`detector.backbone.blocks.0.TransformerEncoderLayer.linear1.weight` ->
    `backbone.blocks.0.mlp.fc1.weight`; raises KeyError for keys outside the model."""
    if not key.startswith(("detector.backbone.", "detector.panoptic_head.")):
        raise KeyError(f"not a VPP detector key: {key}")
    for pattern, replacement in _RULES:
        key = pattern.sub(replacement, key)
    return _NORMS.sub(lambda match: f".norm{int(match.group(1)) + 1}.", key)


# The inverse rules undo `_RULES` in reverse order. Block rules come in two spellings: the VPP
# checkpoints use PyTorch `TransformerEncoderLayer` names, the dense ones timm's (= ours).
_VPP_BLOCK_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^(backbone\.blocks\.\d+)\.attn\.qkv\.(weight|bias)$", r"\1.TransformerEncoderLayer.self_attn.in_proj_\2"),
        (r"^(backbone\.blocks\.\d+)\.attn\.proj\.", r"\1.TransformerEncoderLayer.self_attn.out_proj."),
        (r"^(backbone\.blocks\.\d+)\.mlp\.fc1\.", r"\1.TransformerEncoderLayer.linear1."),
        (r"^(backbone\.blocks\.\d+)\.mlp\.fc2\.", r"\1.TransformerEncoderLayer.linear2."),
        (r"^(backbone\.blocks\.\d+)\.(norm[12])\.", r"\1.TransformerEncoderLayer.\2."),
    )
)
_INVERSE_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^backbone\.map_selective_module\.norm\.", "backbone.interactions.0.matching_module.norm_selector."),
        (r"^backbone\.map_selective_module\.mlp\.", "backbone.interactions.0.matching_module.selector."),
        (r"(transformer_decoder\.layers\.\d+)\.cross_attn\.", r"\1.attentions.0.attn."),
        (r"(transformer_decoder\.layers\.\d+)\.self_attn\.", r"\1.attentions.1.attn."),
        (r"(encoder\.layers\.\d+)\.self_attn\.", r"\1.attentions.0."),
        # only the head's FFNs: the adapter's extractors have their own `ffn.fc1/fc2`
        (r"^(head\..*layers\.\d+)\.ffn\.fc1\.", r"\1.ffns.0.layers.0.0."),
        (r"^(head\..*layers\.\d+)\.ffn\.fc2\.", r"\1.ffns.0.layers.1."),
        (r"^backbone\.", "detector.backbone."),
        (r"^head\.", "detector.panoptic_head."),
    )
)
_HEAD_NORMS = re.compile(r"^(detector\.panoptic_head\..*layers\.\d+)\.norm(\d)\.")


def vppcli_to_official(key: str, block_style: Literal["vpp", "timm"] = "vpp") -> str:
    """`backbone.blocks.0.mlp.fc1.weight` -> `detector.backbone.blocks.0.TransformerEncoderLayer.linear1.weight`
    (block_style "vpp") or `detector.backbone.blocks.0.mlp.fc1.weight` ("timm", the dense checkpoints)."""
    if not key.startswith(("backbone.", "head.")):
        raise KeyError(f"not a vppcli model key: {key}")
    rules = (_VPP_BLOCK_RULES + _INVERSE_RULES) if block_style == "vpp" else _INVERSE_RULES
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return _HEAD_NORMS.sub(lambda match: f"{match.group(1)}.norms.{int(match.group(2)) - 1}.", key)
