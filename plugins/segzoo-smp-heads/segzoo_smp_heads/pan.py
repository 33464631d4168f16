"""Pyramid Attention Network (Li et al., 2018): a feature pyramid attention block on the deepest
feature and global attention upsampling blocks, as smp 0.6.0 builds it."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

from ._common import GlobalAvgPool, StageHead, encoder_stages, segmentation_head, stage_channels


class ConvBnRelu(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, padding: int = 0, add_relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding)
        self.activation = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(cout)
        self.add_relu = add_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.activation(x) if self.add_relu else x


class HalvingMaxPool2d(nn.Module):
    """2 x 2 max pooling, stride 2, as smp's (floor mode: an odd last row or column is dropped),
    except that a side of one pixel stays one pixel instead of vanishing, so that any input size
    works.

    The one-pixel case is -inf padding by ``max(0, 2 - size)``, a symbolic expression that keeps
    H and W dynamic under torch.export (a Python branch on the size would specialise them)."""

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, torch.sym_max(0, 2 - w), 0, torch.sym_max(0, 2 - h)), value=float("-inf"))
        return F.max_pool2d(x, 2, 2)


def _pool() -> HalvingMaxPool2d:
    return HalvingMaxPool2d()


class FPABlock(nn.Module):
    """Feature pyramid attention: a 3-level U-shaped 7/5/3 conv pyramid gates a 1x1 projection."""

    def __init__(self, cin: int, cout: int, upscale_mode: str = "bilinear") -> None:
        super().__init__()
        self.upscale_mode = upscale_mode
        self.align_corners = True if upscale_mode == "bilinear" else None
        self.branch1 = nn.Sequential(GlobalAvgPool(), ConvBnRelu(cin, cout, 1))
        self.mid = nn.Sequential(ConvBnRelu(cin, cout, 1))
        self.down1 = nn.Sequential(_pool(), ConvBnRelu(cin, 1, 7, padding=3))
        self.down2 = nn.Sequential(_pool(), ConvBnRelu(1, 1, 5, padding=2))
        self.down3 = nn.Sequential(_pool(), ConvBnRelu(1, 1, 3, padding=1), ConvBnRelu(1, 1, 3, padding=1))
        self.conv2 = ConvBnRelu(1, 1, 5, padding=2)
        self.conv1 = ConvBnRelu(1, 1, 7, padding=3)

    def _up(self, x: Tensor, size) -> Tensor:
        return F.interpolate(x, size=size, mode=self.upscale_mode, align_corners=self.align_corners)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        b1 = self._up(self.branch1(x), size)
        mid = self.mid(x)
        x1 = self.down1(x)
        x2 = self.down2(x1)
        x3 = self._up(self.down3(x2), x2.shape[-2:])
        x = self._up(self.conv2(x2) + x3, x1.shape[-2:])
        x = self._up(x + self.conv1(x1), size)
        return x * mid + b1


class GAUBlock(nn.Module):
    """Global attention upsampling: the deeper map, globally pooled, gates the shallower one."""

    def __init__(self, cin: int, cout: int, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.interpolation = interpolation
        self.align_corners = True if interpolation == "bilinear" else None
        self.conv1 = nn.Sequential(GlobalAvgPool(), ConvBnRelu(cout, cout, 1, add_relu=False), nn.Sigmoid())
        self.conv2 = ConvBnRelu(cin, cout, 3, padding=1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        y_up = F.interpolate(y, size=x.shape[-2:], mode=self.interpolation, align_corners=self.align_corners)
        return y_up + self.conv2(x) * self.conv1(y)


class PANDecoder(nn.Module):
    def __init__(self, encoder_channels, depth: int, channels: int, interpolation: str) -> None:
        super().__init__()
        enc = list(encoder_channels[2:])
        self.fpa = FPABlock(enc[-1], channels)
        # smp's attribute names: gau3 reads stage 4, gau2 stage 3, gau1 stage 2
        if depth == 5:
            self.gau3 = GAUBlock(enc[2], channels, interpolation)
        if depth >= 4:
            self.gau2 = GAUBlock(enc[1], channels, interpolation)
        self.gau1 = GAUBlock(enc[0], channels, interpolation)

    def forward(self, features: list[Tensor]) -> Tensor:
        feats = features[2:]
        out = self.fpa(feats[-1])
        if hasattr(self, "gau3"):
            out = self.gau3(feats[2], out)
        if hasattr(self, "gau2"):
            out = self.gau2(feats[1], out)
        return self.gau1(feats[0], out)


class PANHead(StageHead):
    def __init__(self, stages, num_classes, channels, interpolation, upsampling) -> None:
        super().__init__(stages, reads=range(1, len(stages)))  # not stage 1 (stride 2)
        self.decoder = PANDecoder(stage_channels(stages), len(stages), channels, interpolation)
        self.segmentation_head = segmentation_head(channels, num_classes, 3, upsampling)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_pan(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_channels: int = 32,
    decoder_interpolation: str = "bilinear",
    upsampling: int = 4,
) -> PANHead:
    """PAN decoder on stages 2..5 (smp ``PAN``; smp runs its encoder at output stride 16)."""
    if encoder_depth < 3:
        raise ValueError(f"PAN needs encoder_depth >= 3, got {encoder_depth}")
    stages = encoder_stages(feature_info, encoder_depth)
    if any(s is None for s in stages[1:]):
        raise ValueError(
            f"PAN needs a backbone feature at stages 2..{encoder_depth}; got {[s and s.name for s in stages]}"
        )
    return PANHead(stages, num_classes, int(decoder_channels), decoder_interpolation, upsampling)


build_pan.required_strides = (4, 8)  # backbone reductions it needs (none on a plain ViT)
