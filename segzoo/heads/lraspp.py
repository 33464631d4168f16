"""Lite R-ASPP head (Howard et al., 2019), as torchvision builds it."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ..backbones.extractor import FeatureInfo
from ..hookspecs import hookimpl


class LRASPPHead(nn.Module):
    """Gated 1x1 branch on the deep feature plus a linear classifier on a stride-8 feature."""

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        num_classes: int,
        inter_channels: int = 128,
        *,
        in_features: tuple[str, str] = ("low", "out"),
    ) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)
        self.in_features = tuple(in_features)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


def build_lraspp(
    feature_info: FeatureInfo,
    num_classes: int,
    *,
    low_feature: str = "low",
    high_feature: str = "out",
    inter_channels: int = 128,
) -> LRASPPHead:
    """LR-ASPP on ``low`` (the first stride-8 feature unless the backbone says otherwise) and ``out``."""
    low, high = feature_info.resolve(low_feature), feature_info.resolve(high_feature)
    return LRASPPHead(
        low.channels, high.channels, num_classes, inter_channels, in_features=(low.name, high.name)
    )


build_lraspp.required_strides = (8,)  # the backbone features it needs (its "low" one); a plain ViT has none


@hookimpl
def register_heads(register):
    register("lraspp", build_lraspp, description="Lite R-ASPP head: gated deep branch + stride-8 classifier")
