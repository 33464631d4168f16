"""SegFormer's all-MLP decoder (Xie et al., 2021): each stage linearly projected, resized to
stride 4, concatenated and fused, as smp 0.6.0 builds it (on any backbone)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

from ._common import StageHead, conv_norm_relu, encoder_stages, segmentation_head, stage_channels


class MLP(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        return self.linear(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)


class SegformerDecoder(nn.Module):
    def __init__(self, encoder_channels, channels: int) -> None:
        super().__init__()
        enc = list(encoder_channels)
        if enc[1] == 0:  # no stride-2 stage (a transformer): smp drops its empty placeholder
            del enc[1]
        enc = enc[::-1]
        self.mlp_stage = nn.ModuleList(MLP(c, channels) for c in enc[:-1])
        self.fuse_stage = conv_norm_relu((len(enc) - 1) * channels, channels, 1, use_norm="batchnorm")

    def forward(self, features: list[Tensor]) -> Tensor:
        # smp: input size // 4, which is the stride-4 stage's size at the sizes it accepts
        size = features[2].shape[-2:]
        feats = features[2:] if features[1].shape[1] == 0 else features[1:]
        outs = [
            F.interpolate(mlp(f), size=size, mode="bilinear", align_corners=False)
            for mlp, f in zip(self.mlp_stage, feats[::-1], strict=True)
        ]
        return self.fuse_stage(torch.cat(outs, dim=1))


class SegformerHead(StageHead):
    def __init__(self, stages, num_classes, channels, upsampling) -> None:
        super().__init__(stages)
        self.decoder = SegformerDecoder(stage_channels(stages), channels)
        self.segmentation_head = segmentation_head(channels, num_classes, 1, upsampling)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_segformer(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_segmentation_channels: int = 256,
    upsampling: int = 4,
) -> SegformerHead:
    """SegFormer's all-MLP decoder on every stage (smp ``Segformer``)."""
    if encoder_depth < 3:
        raise ValueError(f"Segformer needs encoder_depth >= 3, got {encoder_depth}")
    stages = encoder_stages(feature_info, encoder_depth)
    return SegformerHead(stages, num_classes, int(decoder_segmentation_channels), upsampling)
