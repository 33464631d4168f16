"""UPerNet (Xiao et al., 2018): a pyramid pooling module on the deepest feature, an FPN over the
others and a fusion of all levels at stride 4, as smp 0.6.0 builds it, with pooling that exports
at any input size."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

from ._common import (
    AdaptiveAvgPool,
    StageHead,
    conv_norm_relu,
    encoder_stages,
    segmentation_head,
    stage_channels,
)


def _resize(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PSPModule(nn.Module):
    def __init__(self, cin: int, cout: int, bins=(1, 2, 3, 6), use_norm: bool | str = "batchnorm") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool(b), conv_norm_relu(cin, cout, 1, use_norm=use_norm)) for b in bins
        )
        self.out_conv = conv_norm_relu(cin + len(bins) * cout, cout, 3, padding=1, use_norm="batchnorm")

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return self.out_conv(torch.cat([x, *(_resize(blk(x), size) for blk in self.blocks)], dim=1))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an N x C x H x W map."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class FPNLateralBlock(nn.Module):
    def __init__(self, cin: int, cout: int, use_norm: bool | str) -> None:
        super().__init__()
        self.conv_norm_relu = conv_norm_relu(cin, cout, 1, use_norm=use_norm)

    def forward(self, state: Tensor, lateral: Tensor) -> Tensor:
        lateral = self.conv_norm_relu(lateral)
        return _resize(state, lateral.shape[-2:]) + lateral


class UPerNetDecoder(nn.Module):
    def __init__(self, encoder_channels, channels: int, use_norm: bool | str) -> None:
        super().__init__()
        enc = list(encoder_channels[2:])
        self.feature_norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in enc)
        self.psp = PSPModule(enc[-1], channels, use_norm=use_norm)
        lateral = enc[:-1][::-1]
        self.fpn_lateral_blocks = nn.ModuleList(FPNLateralBlock(c, channels, use_norm) for c in lateral)
        self.fpn_conv_blocks = nn.ModuleList(
            conv_norm_relu(channels, channels, 3, padding=1, use_norm=use_norm) for _ in lateral
        )
        self.fusion_block = conv_norm_relu(
            (len(lateral) + 1) * channels, channels, 3, padding=1, use_norm=use_norm
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        feats = [norm(f) for norm, f in zip(self.feature_norms, features[2:], strict=True)]
        pyramid = [self.psp(feats[-1])]
        for block, lateral in zip(self.fpn_lateral_blocks, feats[:-1][::-1], strict=True):
            pyramid.append(block(pyramid[-1], lateral))
        pyramid = [pyramid[0], *(conv(p) for conv, p in zip(self.fpn_conv_blocks, pyramid[1:], strict=True))]
        size = pyramid[-1].shape[-2:]
        return self.fusion_block(torch.cat([_resize(p, size) for p in pyramid[::-1]], dim=1))


class UPerNetHead(StageHead):
    def __init__(self, stages, num_classes, channels, use_norm, upsampling) -> None:
        super().__init__(stages, reads=range(1, len(stages)))  # not stage 1 (stride 2)
        self.decoder = UPerNetDecoder(stage_channels(stages), channels, use_norm)
        self.segmentation_head = segmentation_head(channels, num_classes, 1, upsampling)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_upernet(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_channels: int = 256,
    decoder_use_norm: bool | str = "batchnorm",
    upsampling: int = 4,
) -> UPerNetHead:
    """UPerNet decoder on stages 2..5 (smp ``UPerNet``)."""
    if encoder_depth < 3:
        raise ValueError(f"UPerNet needs encoder_depth >= 3, got {encoder_depth}")
    stages = encoder_stages(feature_info, encoder_depth)
    if any(s is None for s in stages[1:]):
        raise ValueError(
            f"UPerNet needs a backbone feature at stages 2..{encoder_depth}; got {[s and s.name for s in stages]}"
        )
    return UPerNetHead(stages, num_classes, int(decoder_channels), decoder_use_norm, upsampling)


build_upernet.required_strides = (4, 8)  # backbone reductions it needs (none on a plain ViT)
