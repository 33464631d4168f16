"""FCN head (Long et al., 2015), as torchvision builds it."""

from __future__ import annotations

from torch import nn

from ..backbones.extractor import FeatureInfo
from ..hookspecs import hookimpl


class FCNHead(nn.Sequential):
    """3x3 conv, BatchNorm, ReLU, dropout, 1x1 classifier; torchvision's layout and state_dict."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int | None = None,
        dropout: float = 0.1,
        in_feature: str = "out",
    ) -> None:
        inter = channels or in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )
        self.in_features = (in_feature,)


def build_fcn(
    feature_info: FeatureInfo,
    num_classes: int,
    *,
    in_feature: str = "out",
    channels: int | None = None,
    dropout: float = 0.1,
) -> FCNHead:
    """FCN head on one feature (``out`` by default); ``channels`` defaults to in_channels // 4."""
    f = feature_info.resolve(in_feature)
    return FCNHead(f.channels, num_classes, channels=channels, dropout=dropout, in_feature=f.name)


@hookimpl
def register_heads(register):
    register("fcn", build_fcn, description="FCN head: 3x3 conv + BN + ReLU + dropout + 1x1 classifier")
