"""Names of the authors' (mmdet/mmtrack) VPP checkpoints mapped onto vppcli's state_dict.

A pure function of the key, kept apart from the model (timm's `checkpoint_filter_fn` idea). The
mapping is one-to-one on every parameter that affects outputs; `REFERENCE_UNUSED` lists what
the reference stores but never uses.
"""

from __future__ import annotations

import re

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
