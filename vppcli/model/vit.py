"""Plain ViT parts of the ViT-Adapter: patch embedding, position embedding, pre-norm blocks.

A `Block` only ever sees the tokens it must process: pruning gathers the active tokens before
calling it (see `pruning.run_on_active`), so its cost scales with the active tokens and pruned
tokens are neither queries nor keys/values, as in the reference's eval path.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, row-major (token index = row * W + col)."""

    def __init__(self, embed_dim: int, patch_size: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, int, int]:
        """
        Args:
            images: [B, 3, Hp, Wp] normalised, padded images.
        Returns:
            tokens [B, N, D] with N = H * W, and the patch grid size (H, W) = (Hp/16, Wp/16).
        """
        grid = self.proj(images)
        _, _, height, width = grid.shape
        return grid.flatten(2).transpose(1, 2), height, width


def resize_pos_embed(pos_embed: Tensor, pretrain_grid: int, height: int, width: int) -> Tensor:
    """Bicubically resize the pre-training position grid to the current patch grid.

    Args:
        pos_embed: [1, 1 + G*G, D]; slot 0 belonged to a class token and is ignored.
    Returns:
        [1, height*width, D].
    """
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, pretrain_grid, pretrain_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return grid.reshape(1, dim, height * width).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a packed [q; k; v] projection (PyTorch MHA layout)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            x: [B, n, D] tokens.
            key_padding_mask: optional [B, n] bool, True = token may not be attended to
                (the soft-masking training path; inference gathers instead).
        Returns:
            [B, n, D].
        """
        batch, num_tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, num_tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, n, head_dim]
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample; identity at inference."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """[B, n, D] -> [B, n, D]."""
        x = x + self.drop_path(self.attn(self.norm1(x), key_padding_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_vit_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated normal linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

