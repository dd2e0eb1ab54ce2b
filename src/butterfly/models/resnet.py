"""CIFAR-style ResNet (He et al., 2016) with LayerNorm in place of BatchNorm (paper appendix A.1).

``ResNet(depth=20, width=32)`` is the paper's ResNet20-32 and ``ResNet(depth=8, width=64)`` its
ResNet8-64: three stages of ``(depth - 2) / 6`` basic blocks with ``width, 2 width, 4 width``
channels. LayerNorm normalises each example over (channels, positions) with a per-channel affine
(``GroupNorm(1, C)``), so no running statistics exist and interpolated networks need no
re-estimation. Works on 2-D images and, with 1-D convolutions, on 1-D signals. ``ResNet`` has a
hand-written permutation spec; ``ResNet50``'s is derived from its traced graph.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from butterfly.align.spec import Axis, PermutationSpec
from butterfly.models.cnn import conv_cls


def layer_norm(channels: int) -> nn.GroupNorm:
    """LayerNorm over (C, *spatial) with a per-channel scale and shift."""
    return nn.GroupNorm(1, channels)


class BasicBlock(nn.Module):
    def __init__(self, conv: type[nn.Module], c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = conv(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = layer_norm(c_out)
        self.conv2 = conv(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = layer_norm(c_out)
        self.shortcut: nn.Module
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                conv(c_in, c_out, 1, stride, 0, bias=False), layer_norm(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return torch.relu(h + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self, input_shape: tuple[int, ...], n_classes: int, depth: int = 20, width: int = 32
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        conv = conv_cls(input_shape)
        self.conv = conv(input_shape[0], width, 3, 1, 1, bias=False)
        self.norm = layer_norm(width)
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(conv, c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(c_in, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last residual block, pooled over positions."""
        h = torch.relu(self.norm(self.conv(x)))
        h = self.blocks(h)
        return h.flatten(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))

    def permutation_spec(self) -> PermutationSpec:
        """Residual streams share one permutation per stage; each block has an inner one."""
        perms: dict[str, list[Axis]] = defaultdict(list)

        def norm(name: str, p: str) -> None:
            perms[p] += [(f"{name}.weight", 0), (f"{name}.bias", 0)]

        res = "P_res0"
        perms[res] += [("conv.weight", 0)]
        norm("norm", res)
        stage, width = 0, self.blocks[0].conv1.out_channels
        for i, block in enumerate(self.blocks):
            b = f"blocks.{i}"
            if block.conv1.out_channels != width:
                stage, width = stage + 1, block.conv1.out_channels
            new_res = f"P_res{stage}"
            inner = f"P_{b}_inner"
            perms[res] += [(f"{b}.conv1.weight", 1)]
            perms[inner] += [(f"{b}.conv1.weight", 0), (f"{b}.conv2.weight", 1)]
            norm(f"{b}.norm1", inner)
            perms[new_res] += [(f"{b}.conv2.weight", 0)]
            norm(f"{b}.norm2", new_res)
            if isinstance(block.shortcut, nn.Sequential):
                perms[res] += [(f"{b}.shortcut.0.weight", 1)]
                perms[new_res] += [(f"{b}.shortcut.0.weight", 0)]
                norm(f"{b}.shortcut.1", new_res)
            res = new_res
        perms[res] += [("out.weight", 1)]
        return PermutationSpec({k: tuple(v) for k, v in perms.items()})


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 bottleneck with 4x expansion (ResNet-50), LayerNorm."""

    expansion = 4

    def __init__(self, conv: type[nn.Module], c_in: int, planes: int, stride: int):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = conv(c_in, planes, 1, 1, 0, bias=False)
        self.norm1 = layer_norm(planes)
        self.conv2 = conv(planes, planes, 3, stride, 1, bias=False)
        self.norm2 = layer_norm(planes)
        self.conv3 = conv(planes, c_out, 1, 1, 0, bias=False)
        self.norm3 = layer_norm(c_out)
        self.shortcut: nn.Module
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                conv(c_in, c_out, 1, stride, 0, bias=False), layer_norm(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        h = torch.relu(self.norm2(self.conv2(h)))
        h = self.norm3(self.conv3(h))
        return torch.relu(h + self.shortcut(x))


RESNET50_STAGES = (3, 4, 6, 3)


class ResNet50(nn.Module):
    """ResNet-50 (bottleneck blocks 3-4-6-3) with LayerNorm, CIFAR stem (paper appendix A.2).

    ``width`` is the first stage's bottleneck width (64 in the paper; 16 at CPU scale), so the
    stages output ``4 width, 8 width, 16 width, 32 width`` channels. The stem is a 3x3
    convolution without max pooling, as is usual for 32x32 inputs.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        width: int = 64,
        stages: tuple[int, ...] = RESNET50_STAGES,
    ):
        super().__init__()
        conv = conv_cls(input_shape)
        self.conv = conv(input_shape[0], width, 3, 1, 1, bias=False)
        self.norm = layer_norm(width)
        blocks: list[nn.Module] = []
        c_in = width
        for stage, n in enumerate(stages):
            planes = width * 2**stage
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(Bottleneck(conv, c_in, planes, stride))
                c_in = planes * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(c_in, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last block, pooled over positions."""
        h = torch.relu(self.norm(self.conv(x)))
        h = self.blocks(h)
        return h.flatten(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))
