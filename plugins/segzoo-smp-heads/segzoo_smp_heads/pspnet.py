"""PSPNet (Zhao et al., 2017): pyramid pooling into 1, 2, 3 and 6 bins, as smp 0.6.0 builds it,
with adaptive pooling that exports at any input size."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

from ._common import AdaptiveAvgPool, StageHead, conv_norm_relu, encoder_stages, segmentation_head


class PSPBlock(nn.Module):
    def __init__(self, cin: int, cout: int, bins: int, use_norm: bool | str) -> None:
        super().__init__()
        # smp: no norm after the 1x1 global pool (BatchNorm on one value per channel)
        self.pool = nn.Sequential(
            AdaptiveAvgPool(bins),
            conv_norm_relu(cin, cout, 1, use_norm="identity" if bins == 1 else use_norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)


class PSPModule(nn.Module):
    def __init__(self, channels: int, bins=(1, 2, 3, 6), use_norm: bool | str = "batchnorm") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(PSPBlock(channels, channels // len(bins), b, use_norm) for b in bins)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([*(blk(x) for blk in self.blocks), x], dim=1)


class PSPDecoder(nn.Module):
    def __init__(self, channels: int, use_norm, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.psp = PSPModule(channels, use_norm=use_norm)
        # what the pyramid concatenates: smp writes 2 * channels, which is the same when channels
        # divide by 4 and fails otherwise (a pruned ResNet's 142 channels, say)
        pyramid = channels + len(self.psp.blocks) * (channels // len(self.psp.blocks))
        self.conv = conv_norm_relu(pyramid, out_channels, 1, use_norm=use_norm)
        self.dropout = nn.Dropout2d(p=dropout)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.dropout(self.conv(self.psp(features[-1])))


class PSPNetHead(StageHead):
    def __init__(self, stages, num_classes, use_norm, out_channels, dropout, upsampling) -> None:
        super().__init__(stages, reads=[-1])
        self.decoder = PSPDecoder(stages[-1].channels, use_norm, out_channels, dropout)
        self.segmentation_head = segmentation_head(out_channels, num_classes, 3, upsampling)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_pspnet(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    psp_out_channels: int = 512,
    decoder_use_norm: bool | str = "batchnorm",
    psp_dropout: float = 0.2,
    upsampling: int | None = None,
) -> PSPNetHead:
    """Pyramid pooling on the deepest feature (or stage ``encoder_depth``; smp's default is 3),
    upsampled by ``upsampling`` (default: that feature's reduction; smp's 8)."""
    stages = encoder_stages(feature_info, encoder_depth)
    if upsampling is None:
        upsampling = stages[-1].reduction
    return PSPNetHead(
        stages, num_classes, decoder_use_norm, int(psp_out_channels), float(psp_dropout), upsampling
    )
