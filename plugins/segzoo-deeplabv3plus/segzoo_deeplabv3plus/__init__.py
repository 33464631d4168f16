"""DeepLabV3+ for segzoo: ASPP on the deepest feature and a decoder fed by a stride-4 feature."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo
from segzoo import ASPP, atrous_rates_for

__version__ = "0.1.0"


def _conv_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DeepLabV3PlusHead(nn.Module):
    """ASPP(high) upsampled to the stride-4 feature, concatenated with its 1x1 projection, two
    3x3 conv + BN + ReLU, and a 1x1 classifier."""

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        num_classes: int,
        *,
        atrous_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        low_proj_channels: int = 48,
        decoder_channels: int = 256,
        dropout: float = 0.1,
        in_features: tuple[str, str] = ("stride4", "out"),
    ) -> None:
        super().__init__()
        self.aspp = ASPP(high_channels, atrous_rates, aspp_channels, dropout)
        self.low_proj = nn.Sequential(*_conv_bn_relu(low_channels, low_proj_channels, 1))
        self.decoder = nn.Sequential(
            *_conv_bn_relu(aspp_channels + low_proj_channels, decoder_channels, 3),
            *_conv_bn_relu(decoder_channels, decoder_channels, 3),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.in_features = tuple(in_features)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        x = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([x, self.low_proj(low)], dim=1)))


def build_deeplabv3plus(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    low_feature: str = "stride4",
    high_feature: str = "out",
    atrous_rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    low_proj_channels: int = 48,
    decoder_channels: int = 256,
    dropout: float = 0.1,
) -> DeepLabV3PlusHead:
    """DeepLabV3+ head on the first stride-4 feature and the deepest one."""
    low, high = feature_info.resolve(low_feature), feature_info.resolve(high_feature)
    rates = tuple(atrous_rates) if atrous_rates is not None else atrous_rates_for(high.reduction)
    return DeepLabV3PlusHead(
        low.channels,
        high.channels,
        num_classes,
        atrous_rates=rates,
        aspp_channels=aspp_channels,
        low_proj_channels=low_proj_channels,
        decoder_channels=decoder_channels,
        dropout=dropout,
        in_features=(low.name, high.name),
    )


build_deeplabv3plus.required_strides = (4,)  # the backbone features it needs (a plain ViT has none)


@segzoo.hookimpl
def register_heads(register):
    register(
        "deeplabv3plus", build_deeplabv3plus, description="DeepLabV3+: ASPP + decoder on a stride-4 feature"
    )


@segzoo.hookimpl
def register_models(register):
    for arch in ("resnet50", "resnet101"):
        register(
            f"deeplabv3plus_{arch}",
            backbone=arch,
            head="deeplabv3plus",
            backbone_kwargs={"output_stride": 16},
            description=f"DeepLabV3+ on {arch} at output stride 16, as in the paper",
        )
    register(
        "deeplabv3plus_mobilenet_v3_large",
        backbone="mobilenet_v3_large",
        head="deeplabv3plus",
        backbone_kwargs={"output_stride": 16},
        description="DeepLabV3+ on a dilated MobileNetV3-Large (output stride 16)",
    )
