"""DeepLabV3 head (Chen et al., 2017): ASPP, as torchvision builds it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..backbones.extractor import FeatureInfo
from ..errors import UsageError
from ..hookspecs import hookimpl


class ASPPConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool, 1x1 conv, BN, ReLU, upsampled back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 1 and self[2].training:
            raise UsageError(
                "DeepLabV3's ASPP image pooling applies BatchNorm to a 1x1 map, which needs more than "
                "one image per batch in training mode (got a batch of 1). Use a batch size of 2 or "
                "more, call model.eval() for inference, or freeze the BatchNorm layers."
            )
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, image pooling."""

    def __init__(
        self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
            )
        ]
        branches += [ASPPConv(in_channels, out_channels, int(r)) for r in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3Head(nn.Sequential):
    """ASPP, 3x3 conv, BN, ReLU, 1x1 classifier; torchvision's DeepLabHead layout and state_dict."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        atrous_rates: Sequence[int] = (12, 24, 36),
        channels: int = 256,
        dropout: float = 0.5,
        in_feature: str = "out",
    ) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates, channels, dropout),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.in_features = (in_feature,)


def atrous_rates_for(reduction: int) -> tuple[int, int, int]:
    """ASPP rates for a feature at this output stride: (6, 12, 18) at 16, (12, 24, 36) at 8."""
    return tuple(max(1, r * 16 // reduction) for r in (6, 12, 18))  # type: ignore[return-value]


def build_deeplabv3(
    feature_info: FeatureInfo,
    num_classes: int,
    *,
    in_feature: str = "out",
    atrous_rates: Sequence[int] | None = None,
    channels: int = 256,
    dropout: float = 0.5,
) -> DeepLabV3Head:
    """DeepLabV3 head; ``atrous_rates`` default to the feature's output stride."""
    f = feature_info.resolve(in_feature)
    rates = tuple(atrous_rates) if atrous_rates is not None else atrous_rates_for(f.reduction)
    return DeepLabV3Head(
        f.channels, num_classes, atrous_rates=rates, channels=channels, dropout=dropout, in_feature=f.name
    )


@hookimpl
def register_heads(register):
    register(
        "deeplabv3", build_deeplabv3, description="DeepLabV3 head: ASPP with rates set by the output stride"
    )
