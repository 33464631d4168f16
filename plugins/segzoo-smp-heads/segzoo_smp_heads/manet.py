"""MA-Net (Fan et al., 2020): position-wise attention on the deepest feature and multi-scale
fusion attention blocks up the decoder, as smp 0.6.0 builds it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import segzoo

from ._common import (
    GlobalAvgPool,
    StageHead,
    conv_norm_relu,
    encoder_stages,
    segmentation_head,
    stage_channels,
)
from ._common import upsample_to as _up
from .unet import _check_channels


class PABBlock(nn.Module):
    """Position attention: every position attends to every other one of the deepest feature."""

    def __init__(self, channels: int, pab_channels: int = 64) -> None:
        super().__init__()
        self.in_channels = channels
        self.top_conv = nn.Conv2d(channels, pab_channels, 1)
        self.center_conv = nn.Conv2d(channels, pab_channels, 1)
        self.bottom_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.map_softmax = nn.Softmax(dim=1)
        self.out_conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        top = self.top_conv(x).flatten(2)
        center = self.center_conv(x).flatten(2).transpose(1, 2)
        bottom = self.bottom_conv(x).flatten(2).transpose(1, 2)
        # smp normalises over the whole (h*w) x (h*w) map at once, not per row
        attn = self.map_softmax(torch.matmul(center, top).reshape(n, -1)).reshape(n, h * w, h * w)
        attn = torch.matmul(attn, bottom).reshape(n, self.in_channels, h, w)
        return self.out_conv(x + attn)


def _se(channels: int, reduced: int) -> nn.Sequential:
    return nn.Sequential(
        GlobalAvgPool(),
        nn.Conv2d(channels, reduced, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(reduced, channels, 1),
        nn.Sigmoid(),
    )


class MFABBlock(nn.Module):
    """Multi-scale fusion attention: channel attention of both inputs gates the upsampled one."""

    def __init__(self, cin, cskip, cout, interpolation, use_norm, reduction: int = 16) -> None:
        super().__init__()
        self.hl_conv = nn.Sequential(
            conv_norm_relu(cin, cin, 3, padding=1, use_norm=use_norm),
            conv_norm_relu(cin, cskip, 1, use_norm=use_norm),
        )
        reduced = max(1, cskip // reduction)
        self.SE_ll = _se(cskip, reduced)
        self.SE_hl = _se(cskip, reduced)
        self.conv1 = conv_norm_relu(2 * cskip, cout, 3, padding=1, use_norm=use_norm)
        self.conv2 = conv_norm_relu(cout, cout, 3, padding=1, use_norm=use_norm)
        self.interpolation = interpolation

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = _up(self.hl_conv(x), skip, self.interpolation)
        x = torch.cat([x * (self.SE_hl(x) + self.SE_ll(skip)), skip], dim=1)
        return self.conv2(self.conv1(x))


class PlainBlock(nn.Module):
    def __init__(self, cin, cskip, cout, interpolation, use_norm) -> None:
        super().__init__()
        self.conv1 = conv_norm_relu(cin + cskip, cout, 3, padding=1, use_norm=use_norm)
        self.conv2 = conv_norm_relu(cout, cout, 3, padding=1, use_norm=use_norm)
        self.interpolation = interpolation

    def forward(self, x: Tensor, skip: Tensor | None, size_like: Tensor) -> Tensor:
        x = _up(x, size_like, self.interpolation)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class MAnetDecoder(nn.Module):
    def __init__(self, encoder_channels, decoder_channels, use_norm, pab_channels, interpolation) -> None:
        super().__init__()
        enc = list(encoder_channels[1:])[::-1]
        ins = [enc[0], *decoder_channels[:-1]]
        skips = [*enc[1:], 0]
        self.center = PABBlock(enc[0], pab_channels)
        self.blocks = nn.ModuleList(
            MFABBlock(i, s, o, interpolation, use_norm)
            if s > 0
            else PlainBlock(i, s, o, interpolation, use_norm)
            for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        feats = features[::-1]
        x = self.center(feats[0])
        skips = feats[1:-1]
        for i, block in enumerate(self.blocks):
            if isinstance(block, MFABBlock):
                x = block(x, skips[i])
            else:
                skip = skips[i] if i < len(skips) else None
                x = block(x, skip, feats[i + 1])
        return x


class MAnetHead(StageHead):
    def __init__(self, stages, num_classes, decoder_channels, use_norm, pab_channels, interpolation) -> None:
        super().__init__(stages)
        self.decoder = MAnetDecoder(
            stage_channels(stages), decoder_channels, use_norm, pab_channels, interpolation
        )
        self.segmentation_head = segmentation_head(decoder_channels[-1], num_classes, 3)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_manet(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_use_norm: bool | str = "batchnorm",
    decoder_pab_channels: int = 64,
    decoder_interpolation: str = "nearest",
) -> MAnetHead:
    """MA-Net decoder on the stride-2..32 features (smp ``MAnet``)."""
    stages = encoder_stages(feature_info, encoder_depth)
    channels = _check_channels(decoder_channels, encoder_depth)
    return MAnetHead(
        stages, num_classes, channels, decoder_use_norm, int(decoder_pab_channels), decoder_interpolation
    )
