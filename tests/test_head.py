"""Mask2Former head: shapes, official parameter names, positional encoding, track queries,
masked attention and numerical robustness. Small inputs only (a 64x96 padded image)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from vppcli.config import HeadConfig, compact_config
from vppcli.model.mask2former import (
    HeadOutput,
    Mask2FormerHead,
    MaskedAttentionDecoderLayer,
    build_attention_mask,
)
from vppcli.model.position_encoding import sine_position_encoding

DOCS = Path(__file__).parent / "data"  # copies of ../shared/docs/keys_vpp_*.txt
IMAGE_HW = (64, 96)
STRIDES = (4, 8, 16, 32)


def make_features(in_channels: int, batch: int = 1, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    height, width = IMAGE_HW
    return [
        torch.randn(batch, in_channels, height // s, width // s, generator=generator) for s in STRIDES
    ]


def make_head(cfg: HeadConfig, in_channels: int = 192, seed: int = 0) -> Mask2FormerHead:
    torch.manual_seed(seed)
    return Mask2FormerHead(in_channels, cfg).eval()


@pytest.fixture(scope="module")
def official_head() -> Mask2FormerHead:
    return make_head(HeadConfig())


def official_to_ours(key: str) -> str:
    """The renaming rules of the module docstring of `vppcli.model.mask2former`."""
    key = key.removeprefix("detector.panoptic_head.")
    key = key.replace("attentions.0.attn.", "cross_attn.").replace("attentions.1.attn.", "self_attn.")
    key = key.replace("attentions.0.", "self_attn.")
    key = key.replace("ffns.0.layers.0.0.", "ffn.fc1.").replace("ffns.0.layers.1.", "ffn.fc2.")
    return re.sub(r"norms\.(\d+)\.", lambda m: f"norm{int(m.group(1)) + 1}.", key)


def official_head_shapes(name: str) -> dict[str, tuple[int, ...]]:
    path = DOCS / name
    shapes = {}
    for line in path.read_text().splitlines():
        if line.startswith("detector.panoptic_head."):
            key, shape = line.split(" ", 1)
            shapes[official_to_ours(key)] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return shapes


@pytest.mark.parametrize(("file_name", "in_channels"), [("keys_vpp_tiny.txt", 192), ("keys_vpp_small.txt", 384)])
def test_state_dict_matches_official_keys(file_name: str, in_channels: int) -> None:
    expected = official_head_shapes(file_name)
    head = Mask2FormerHead(in_channels, HeadConfig())
    ours = {key: tuple(value.shape) for key, value in head.state_dict().items()}
    assert set(ours) == set(expected), (sorted(set(ours) - set(expected)), sorted(set(expected) - set(ours)))
    assert ours == expected


def check_output(out: HeadOutput, batch: int, num_queries: int, cfg: HeadConfig) -> None:
    height, width = IMAGE_HW[0] // 4, IMAGE_HW[1] // 4
    assert out.class_logits.shape == (batch, num_queries, cfg.num_classes + 1)
    assert out.mask_logits.shape == (batch, num_queries, height, width)
    assert out.query_features.shape == (batch, num_queries, cfg.feat_channels)
    for tensor in (out.class_logits, out.mask_logits, out.query_features):
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("num_tracks", [0, 3])
def test_official_head_shapes(official_head: Mask2FormerHead, num_tracks: int) -> None:
    cfg = HeadConfig()
    tracks = torch.randn(1, num_tracks, cfg.feat_channels)
    with torch.no_grad():
        out = official_head(make_features(192), tracks, return_intermediate=True)
    check_output(out, 1, cfg.num_queries + num_tracks, cfg)
    assert out.intermediate is not None and len(out.intermediate) == cfg.num_decoder_layers + 1
    assert out.intermediate[-1][0] is out.class_logits and out.intermediate[-1][1] is out.mask_logits
    # Random weights must still give varied, non-degenerate masks.
    assert out.mask_logits.std() > 1e-3 and out.class_logits.std() > 1e-3


def test_compact_head_batch_and_shared_tracks() -> None:
    cfg = compact_config().head
    head = make_head(cfg)
    tracks = torch.randn(2, cfg.feat_channels)  # [K, C] is shared by the batch
    with torch.no_grad():
        out = head(make_features(192, batch=2), tracks)
    check_output(out, 2, cfg.num_queries + 2, cfg)
    assert out.intermediate is None


def test_stages_compose_to_forward(official_head: Mask2FormerHead) -> None:
    features = make_features(192)
    with torch.no_grad():
        mask_features, memories = official_head.pixel_decoder(features)
        staged = official_head.decode_queries(mask_features, memories)
        direct = official_head(features)
    assert mask_features.shape == (1, 256, 16, 24)
    assert [tuple(m.shape[-2:]) for m in memories] == [(2, 3), (4, 6), (8, 12)]
    assert torch.equal(staged.mask_logits, direct.mask_logits)


def test_empty_track_queries_equal_none(official_head: Mask2FormerHead) -> None:
    features = make_features(192)
    with torch.no_grad():
        without = official_head(features)
        empty = official_head(features, torch.zeros(1, 0, 256))
    assert torch.equal(without.class_logits, empty.class_logits)
    assert torch.equal(without.mask_logits, empty.mask_logits)
    assert torch.equal(without.query_features, empty.query_features)


def test_track_queries_interact_with_static_queries(official_head: Mask2FormerHead) -> None:
    features = make_features(192)
    with torch.no_grad():
        without = official_head(features)
        with_tracks = official_head(features, torch.randn(1, 2, 256))
    # Through self-attention the static queries see the tracks.
    assert not torch.allclose(without.query_features, with_tracks.query_features[:, :100])


def test_deterministic(official_head: Mask2FormerHead) -> None:
    features = make_features(192)
    tracks = torch.randn(1, 2, 256)
    with torch.no_grad():
        first = official_head(features, tracks)
        second = official_head(features, tracks)
    assert torch.equal(first.mask_logits, second.mask_logits)
    assert torch.equal(first.class_logits, second.class_logits)


def test_bf16_autocast_is_finite() -> None:
    cfg = compact_config().head
    head = make_head(cfg)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(make_features(192), torch.randn(1, 2, cfg.feat_channels))
    check_output(out, 1, cfg.num_queries + 2, cfg)


def test_sine_position_encoding_matches_formula() -> None:
    height, width, num_feats = 3, 5, 8
    pos = sine_position_encoding(2, height, width, num_feats)
    assert pos.shape == (2, 2 * num_feats, height, width)
    for row in range(height):
        for col in range(width):
            y = (row + 1) / (height + 1e-6) * 2 * math.pi
            x = (col + 1) / (width + 1e-6) * 2 * math.pi
            expected = []
            for value in (y, x):
                for k in range(num_feats // 2):
                    t = 10000 ** (2 * k / num_feats)
                    expected += [math.sin(value / t), math.cos(value / t)]
            torch.testing.assert_close(pos[1, :, row, col], torch.tensor(expected), atol=1e-5, rtol=0)


def test_attention_mask_unmasks_empty_rows() -> None:
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 0, :2, :2] = 5.0  # query 0 covers the top-left quarter; query 1 covers nothing
    mask = build_attention_mask(logits, (2, 2), num_heads=3)
    assert mask.shape == (3, 2, 4) and mask.dtype == torch.bool
    # True means "not allowed": query 0 may attend only to the top-left key.
    assert mask[:, 0].tolist() == [[False, True, True, True]] * 3
    assert not mask[:, 1].any()  # an all-blocked row attends everywhere instead


def test_attention_mask_is_batch_major() -> None:
    logits = torch.full((2, 1, 2, 2), -5.0)
    logits[1, 0, 0, 0] = 5.0
    mask = build_attention_mask(logits, (2, 2), num_heads=2)
    assert not mask[:2].any()  # batch 0: empty row, unmasked for both heads
    assert mask[2:, 0].tolist() == [[False, True, True, True]] * 2


def manual_attention(attn: torch.nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor, blocked: Tensor) -> Tensor:
    """Multi-head attention written out, with `blocked` [B*heads, N, S] True = not allowed."""
    batch, num_queries, channels = q.shape
    heads, head_dim = attn.num_heads, channels // attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return (x @ w.T + b).view(batch, -1, heads, head_dim).transpose(1, 2)

    scores = split(q, w_q, b_q) @ split(k, w_k, b_k).transpose(-1, -2) / math.sqrt(head_dim)
    scores = scores.masked_fill(blocked.view(batch, heads, num_queries, -1), float("-inf"))
    out = (scores.softmax(-1) @ split(v, w_v, b_v)).transpose(1, 2).reshape(batch, num_queries, channels)
    return attn.out_proj(out)


def test_decoder_layer_matches_written_out_attention() -> None:
    torch.manual_seed(0)
    layer = MaskedAttentionDecoderLayer(dim=16, num_heads=2, ffn_dim=32).eval()
    query, query_pos = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    memory, memory_pos = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    blocked = build_attention_mask(torch.randn(2, 5, 2, 3), (2, 3), num_heads=2)
    with torch.no_grad():
        out = layer(query, query_pos, memory, memory_pos, blocked)
        # Positions go into queries and keys only, never into values.
        cross = manual_attention(layer.cross_attn, query + query_pos, memory + memory_pos, memory, blocked)
        x = layer.norm1(query + cross)
        no_mask = torch.zeros(4, 5, 5, dtype=torch.bool)
        x = layer.norm2(x + manual_attention(layer.self_attn, x + query_pos, x + query_pos, x, no_mask))
        expected = layer.norm3(x + layer.ffn(x))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
