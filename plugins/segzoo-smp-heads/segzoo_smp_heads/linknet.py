"""LinkNet (Chaurasia and Culurciello, 2017): residual-style decoder blocks whose output is added
to the encoder's skip, as smp 0.6.0 builds it."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

from ._common import StageHead, conv_norm_relu, encoder_stages, norm_layer, segmentation_head, stage_channels


class DecoderBlock(nn.Module):
    """1x1 reduce, 2x transposed conv, 1x1 expand (each with norm and ReLU)."""

    def __init__(self, cin: int, cout: int, use_norm: bool | str) -> None:
        super().__init__()
        mid = cin // 4
        up_norm = norm_layer(use_norm, mid)
        self.block = nn.Sequential(
            conv_norm_relu(cin, mid, 1, use_norm=use_norm),
            nn.Sequential(
                nn.ConvTranspose2d(mid, mid, 4, stride=2, padding=1), up_norm, nn.ReLU(inplace=True)
            ),
            conv_norm_relu(mid, cout, 1, use_norm=use_norm),
        )

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = self.block(x)
        if skip is not None:
            if x.shape[-2:] != skip.shape[-2:]:  # odd sizes: smp needs sizes divisible by 32
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            if skip.shape[1] != 0:
                x = x + skip
        return x


class LinknetDecoder(nn.Module):
    def __init__(self, encoder_channels, use_norm, prefinal_channels: int = 32) -> None:
        super().__init__()
        channels = [*list(encoder_channels[1:])[::-1], prefinal_channels]
        for i in range(1, len(channels) - 1):
            if channels[i] == 0:  # a missing stage keeps the width of the one before
                channels[i] = channels[i - 1]
        self.blocks = nn.ModuleList(
            DecoderBlock(channels[i], channels[i + 1], use_norm) for i in range(len(channels) - 1)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        feats = features[1:][::-1]
        x, skips = feats[0], feats[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


class LinknetHead(StageHead):
    def __init__(self, stages, num_classes, use_norm) -> None:
        super().__init__(stages)
        self.decoder = LinknetDecoder(stage_channels(stages), use_norm)
        self.segmentation_head = segmentation_head(32, num_classes, 1)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_linknet(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_use_norm: bool | str = "batchnorm",
) -> LinknetHead:
    """LinkNet decoder on the stride-2..32 features (smp ``Linknet``)."""
    return LinknetHead(encoder_stages(feature_info, encoder_depth), num_classes, decoder_use_norm)
