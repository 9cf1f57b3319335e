"""ViT-Adapter side branch: spatial prior CNN, injectors (c -> x) and extractors (x -> c).

The adapter branch stays dense under VPP: injectors update every token, pruned ones included,
and extractors sample the full token map (pruned tokens with their stale values).

The deformable attentions here reproduce mmcv's module, which adds its (normalised) query as
an identity residual *inside* the attention; that residual is written out explicitly below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vppcli.model.deform_attn import MSDeformAttn
from vppcli.model.vit import DropPath


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class SpatialPriorModule(nn.Module):
    """Small CNN giving the adapter its stride 4/8/16/32 features (always dense)."""

    def __init__(self, inplanes: int, embed_dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, inplanes, 2),
            *_conv_bn_relu(inplanes, inplanes, 1),
            *_conv_bn_relu(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, kernel_size=1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, kernel_size=1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Args:
            images: [B, 3, Hp, Wp], Hp and Wp multiples of 32.
        Returns:
            c1 [B, D, Hp/4, Wp/4] map; c2 [B, 4N, D], c3 [B, N, D], c4 [B, N/4, D] token
            sequences at strides 8/16/32 (N = Hp*Wp/256).
        """
        s4 = self.stem(images)
        s8 = self.conv2(s4)
        s16 = self.conv3(s8)
        s32 = self.conv4(s16)
        c1 = self.fc1(s4)
        c2, c3, c4 = (fc(s).flatten(2).transpose(1, 2) for fc, s in ((self.fc2, s8), (self.fc3, s16), (self.fc4, s32)))
        return c1, c2, c3, c4


class DWConv(nn.Module):
    """One depthwise 3x3 conv applied to each of the three adapter scales separately."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """[B, 21N/4, C] -> same; (height, width) is the stride-16 grid."""
        batch, _, channels = x.shape
        sizes = ((2 * height, 2 * width), (height, width), (height // 2, width // 2))
        parts = torch.split(x, [h * w for h, w in sizes], dim=1)
        # Tokens [B, h*w, C] are a channels-last map: the convolution reads and writes that
        # layout directly, so no transpose copy is made on the way in or out.
        out = [
            self.dwconv(part.view(batch, h, w, channels).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(batch, h * w, channels)
            for part, (h, w) in zip(parts, sizes)
        ]
        return torch.cat(out, dim=1)


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


@dataclass(frozen=True)
class DeformInputs:
    """Reference points and level shapes of the injector and extractor attentions."""

    injector_points: Tensor  # [1, N, 1, 2] stride-16 token centres
    injector_shapes: list[tuple[int, int]]  # c levels: strides 8, 16, 32
    extractor_points: Tensor  # [1, 21N/4, 1, 2] centres of the c tokens, level by level
    extractor_shapes: list[tuple[int, int]]  # x: stride 16


def _centres(shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
    return torch.cat(points, 0)[None, :, None, :]


def deform_inputs(padded_height: int, padded_width: int, device: torch.device) -> DeformInputs:
    c_shapes = [(padded_height // s, padded_width // s) for s in (8, 16, 32)]
    x_shapes = [c_shapes[1]]
    return DeformInputs(_centres(x_shapes, device), c_shapes, _centres(c_shapes, device), x_shapes)


class Injector(nn.Module):
    """x <- x + gamma * (MSDA(LN(x) -> LN(c)) + LN(x)): adapter features flow into the ViT."""

    def __init__(self, dim: int, num_heads: int, num_points: int, norm_eps: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, num_heads, num_levels=3, num_points=num_points)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, c: Tensor, inputs: DeformInputs) -> Tensor:
        """x [B, N, D], c [B, 21N/4, D] -> updated x [B, N, D] (every token, pruned or not)."""
        query = self.query_norm(x)
        attended = self.attn(query, inputs.injector_points, self.feat_norm(c), inputs.injector_shapes)
        return x + self.gamma * (attended + query)


class Extractor(nn.Module):
    """c <- c + MSDA(LN(c) -> LN(x)) + LN(c); c <- c + ConvFFN(LN(c)): ViT features flow out."""

    def __init__(self, dim: int, num_heads: int, num_points: int, cffn_ratio: float, norm_eps: float,
                 drop_path: float) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, num_heads, num_levels=1, num_points=num_points)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, c: Tensor, x: Tensor, inputs: DeformInputs, height: int, width: int) -> Tensor:
        """c [B, 21N/4, D], x [B, N, D] on the (height, width) grid -> updated c."""
        query = self.query_norm(c)
        c = c + self.attn(query, inputs.extractor_points, self.feat_norm(x), inputs.extractor_shapes) + query
        return c + self.drop_path(self.ffn(self.ffn_norm(c), height, width))


class InteractionBlock(nn.Module):
    """The adapter half of one interaction; the ViT blocks between injector and extractors are
    run by the backbone, which owns the pruning decisions."""

    def __init__(self, dim: int, num_heads: int, num_points: int, cffn_ratio: float, norm_eps: float,
                 drop_path: float, num_extra_extractors: int) -> None:
        super().__init__()
        self.injector = Injector(dim, num_heads, num_points, norm_eps)
        self.extractor = Extractor(dim, num_heads, num_points, cffn_ratio, norm_eps, drop_path)
        self.extra_extractors = nn.ModuleList(
            Extractor(dim, num_heads, num_points, cffn_ratio, norm_eps, drop_path)
            for _ in range(num_extra_extractors)
        )

    def extract(self, c: Tensor, x: Tensor, inputs: DeformInputs, height: int, width: int) -> Tensor:
        """All extractors read the same final x of the interaction."""
        c = self.extractor(c, x, inputs, height, width)
        for extractor in self.extra_extractors:
            c = extractor(c, x, inputs, height, width)
        return c
