"""Feature Pyramid Network for segmentation (Kirillov et al., 2019, "panoptic FPN"), as smp 0.6.0
builds it: a top-down pyramid, each level upsampled to stride 4 and summed (or concatenated)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

from ._common import StageHead, encoder_stages, segmentation_head, stage_channels
from ._common import upsample_to as _up


class FPNBlock(nn.Module):
    def __init__(self, pyramid_channels: int, skip_channels: int, interpolation: str) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, pyramid_channels, 1)
        self.interpolation = interpolation

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return _up(x, skip, self.interpolation) + self.skip_conv(skip)


class Conv3x3GNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(32, cout), nn.ReLU(inplace=True)
        )

    def forward(self, x: Tensor, size) -> Tensor:
        x = self.block(x)
        if self.upsample:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return x


class SegmentationBlock(nn.Module):
    """Conv-GN-ReLU blocks, each upsampling one pyramid level until stride 4."""

    def __init__(self, cin: int, cout: int, n_upsamples: int) -> None:
        super().__init__()
        blocks = [Conv3x3GNReLU(cin, cout, upsample=n_upsamples > 0)]
        blocks += [Conv3x3GNReLU(cout, cout, upsample=True) for _ in range(1, n_upsamples)]
        self.block = nn.Sequential(*blocks)

    def forward(self, x: Tensor, sizes: list) -> Tensor:
        for i, blk in enumerate(self.block):
            x = blk(x, sizes[i] if i < len(sizes) else None)
        return x


class FPNDecoder(nn.Module):
    def __init__(
        self, encoder_channels, pyramid_channels, segmentation_channels, dropout, merge_policy, interpolation
    ):
        super().__init__()
        if merge_policy not in ("add", "cat"):
            raise ValueError(f"decoder_merge_policy must be 'add' or 'cat', got {merge_policy!r}")
        self.merge_policy = merge_policy
        self.out_channels = segmentation_channels * (1 if merge_policy == "add" else 4)
        c5, c4, c3, c2 = list(encoder_channels)[::-1][:4]
        self.p5 = nn.Conv2d(c5, pyramid_channels, 1)
        self.p4 = FPNBlock(pyramid_channels, c4, interpolation)
        self.p3 = FPNBlock(pyramid_channels, c3, interpolation)
        self.p2 = FPNBlock(pyramid_channels, c2, interpolation)
        self.seg_blocks = nn.ModuleList(
            SegmentationBlock(pyramid_channels, segmentation_channels, n) for n in (3, 2, 1, 0)
        )
        self.dropout = nn.Dropout2d(p=dropout, inplace=True)

    def forward(self, features: list[Tensor]) -> Tensor:
        c2, c3, c4, c5 = features[-4:]
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        p2 = self.p2(p3, c2)
        sizes = [p4.shape[-2:], p3.shape[-2:], p2.shape[-2:]]
        pyramid = [
            blk(p, sizes[i:])
            for i, (blk, p) in enumerate(zip(self.seg_blocks, (p5, p4, p3, p2), strict=True))
        ]
        x = torch.stack(pyramid).sum(dim=0) if self.merge_policy == "add" else torch.cat(pyramid, dim=1)
        return self.dropout(x)


class FPNHead(StageHead):
    def __init__(self, stages, num_classes, pyramid, segmentation, dropout, merge, interpolation, upsampling):
        super().__init__(stages, reads=[-4, -3, -2, -1])  # the four deepest stages
        self.decoder = FPNDecoder(
            stage_channels(stages), pyramid, segmentation, dropout, merge, interpolation
        )
        self.segmentation_head = segmentation_head(self.decoder.out_channels, num_classes, 1, upsampling)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_fpn(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_pyramid_channels: int = 256,
    decoder_segmentation_channels: int = 128,
    decoder_merge_policy: str = "add",
    decoder_dropout: float = 0.2,
    decoder_interpolation: str = "nearest",
    upsampling: int = 4,
) -> FPNHead:
    """FPN decoder on the four deepest stages (smp ``FPN``)."""
    if encoder_depth < 4:
        raise ValueError(f"FPN needs encoder_depth >= 4 (four pyramid levels), got {encoder_depth}")
    stages = encoder_stages(feature_info, encoder_depth)
    if any(s is None for s in stages[-4:]):
        raise ValueError(
            f"FPN needs a backbone feature at each of its four deepest stages; got {[s and s.name for s in stages]}"
        )
    return FPNHead(
        stages,
        num_classes,
        int(decoder_pyramid_channels),
        int(decoder_segmentation_channels),
        float(decoder_dropout),
        decoder_merge_policy,
        decoder_interpolation,
        upsampling,
    )


build_fpn.required_strides = (4, 8)  # backbone reductions it needs (none on a plain ViT)
