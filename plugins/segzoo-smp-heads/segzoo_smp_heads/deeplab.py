"""smp 0.6.0's DeepLabV3 (Chen et al., 2017) and DeepLabV3+ (Chen et al., 2018).

They are separate heads (``deeplabv3_smp``, ``deeplabv3plus_smp``) rather than options of segzoo's
torchvision-exact ``deeplabv3`` and the ``deeplabv3plus`` plugin: smp's differ in structure (depthwise
separable ASPP convolutions, an extra 3x3 conv after ASPP, dropout 0.5, a 1x1 classifier followed
by aligned-corner upsampling inside the model), so options would make every one of those heads a
bag of flags, each exact to a different reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

from ._common import GlobalAvgPool, StageHead, encoder_stages, segmentation_head


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU()]


class SeparableConv2d(nn.Sequential):
    """Depthwise conv, then a pointwise 1x1."""

    def __init__(self, cin: int, cout: int, k: int, padding: int = 0, dilation: int = 1, bias: bool = True):
        super().__init__(
            nn.Conv2d(cin, cin, k, padding=padding, dilation=dilation, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=bias),
        )


class ASPPPooling(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(GlobalAvgPool(), nn.Conv2d(cin, cout, 1, bias=False), *_bn_relu(cout))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 (optionally separable), image pooling."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], separable: bool, dropout: float) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if len(rates) != 3:
            raise ValueError(f"atrous rates must be three numbers, got {rates}")
        branches: list[nn.Module] = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), *_bn_relu(cout))]
        for r in rates:
            conv = (
                SeparableConv2d(cin, cout, 3, padding=r, dilation=r, bias=False)
                if separable
                else nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False)
            )
            branches.append(nn.Sequential(conv, *_bn_relu(cout)))
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(5 * cout, cout, 1, bias=False), *_bn_relu(cout), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3Decoder(nn.Module):
    def __init__(self, cin: int, cout: int, rates, separable: bool, dropout: float) -> None:
        super().__init__()
        self.aspp = ASPP(cin, cout, rates, separable, dropout)
        self.conv = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.relu(self.bn(self.conv(self.aspp(features[-1]))))


class DeepLabV3Head(StageHead):
    def __init__(self, stages, num_classes, channels, rates, separable, dropout, upsampling) -> None:
        super().__init__(stages, reads=[-1])
        self.decoder = DeepLabV3Decoder(stages[-1].channels, channels, rates, separable, dropout)
        self.segmentation_head = segmentation_head(channels, num_classes, 1, upsampling)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_deeplabv3_smp(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_channels: int = 256,
    decoder_atrous_rates: Sequence[int] = (12, 24, 36),
    decoder_aspp_separable: bool = False,
    decoder_aspp_dropout: float = 0.5,
    upsampling: int | None = None,
) -> DeepLabV3Head:
    """smp's DeepLabV3 on the deepest feature (smp runs its encoder at output stride 8);
    ``upsampling`` defaults to that feature's reduction."""
    stages = encoder_stages(feature_info, encoder_depth)
    if upsampling is None:
        upsampling = stages[-1].reduction
    return DeepLabV3Head(
        stages,
        num_classes,
        int(decoder_channels),
        decoder_atrous_rates,
        bool(decoder_aspp_separable),
        float(decoder_aspp_dropout),
        upsampling,
    )


class DeepLabV3PlusDecoder(nn.Module):
    def __init__(self, encoder_channels, cout: int, rates, separable: bool, dropout: float) -> None:
        super().__init__()
        self.aspp = nn.Sequential(
            ASPP(encoder_channels[-1], cout, rates, separable, dropout),
            SeparableConv2d(cout, cout, 3, padding=1, bias=False),
            *_bn_relu(cout),
        )
        self.block1 = nn.Sequential(nn.Conv2d(encoder_channels[2], 48, 1, bias=False), *_bn_relu(48))
        self.block2 = nn.Sequential(
            SeparableConv2d(48 + cout, cout, 3, padding=1, bias=False), *_bn_relu(cout)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        high = features[2]
        # smp upsamples by a scale factor (output stride / 4); at its sizes that is high's size
        x = F.interpolate(self.aspp(features[-1]), size=high.shape[-2:], mode="bilinear", align_corners=True)
        return self.block2(torch.cat([x, self.block1(high)], dim=1))


class DeepLabV3PlusHead(StageHead):
    def __init__(self, stages, num_classes, channels, rates, separable, dropout, upsampling) -> None:
        super().__init__(stages, reads=[1, -1])
        channels_list = [3, *(0 if s is None else s.channels for s in stages)]
        self.decoder = DeepLabV3PlusDecoder(channels_list, channels, rates, separable, dropout)
        self.segmentation_head = segmentation_head(channels, num_classes, 1, upsampling)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def build_deeplabv3plus_smp(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_channels: int = 256,
    decoder_atrous_rates: Sequence[int] = (12, 24, 36),
    decoder_aspp_separable: bool = True,
    decoder_aspp_dropout: float = 0.5,
    upsampling: int = 4,
) -> DeepLabV3PlusHead:
    """smp's DeepLabV3+ on the stride-4 stage and the deepest one (smp runs its encoder at output
    stride 16)."""
    if encoder_depth < 3:
        raise ValueError(f"DeepLabV3+ needs encoder_depth >= 3, got {encoder_depth}")
    stages = encoder_stages(feature_info, encoder_depth)
    if stages[1] is None:
        raise ValueError("DeepLabV3+ needs a backbone feature at stride 4")
    return DeepLabV3PlusHead(
        stages,
        num_classes,
        int(decoder_channels),
        decoder_atrous_rates,
        bool(decoder_aspp_separable),
        float(decoder_aspp_dropout),
        upsampling,
    )


build_deeplabv3plus_smp.required_strides = (4,)  # backbone reductions it needs (none on a plain ViT)
