"""Segmentation heads. Each consumes named backbone features (its ``in_features``)."""

from .deeplabv3 import ASPP, DeepLabV3Head
from .fcn import FCNHead
from .lraspp import LRASPPHead

__all__ = ["ASPP", "DeepLabV3Head", "FCNHead", "LRASPPHead"]
