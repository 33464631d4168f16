"""segzoo: a plugin-based semantic-segmentation model zoo."""

from __future__ import annotations

__version__ = "0.1.0"

from ._factory import create, list_backbones, list_heads, list_models, model_info
from .backbones.extractor import Feature, FeatureExtractor, FeatureInfo
from .engine.evaluate import evaluate
from .engine.predict import predict
from .engine.train import TrainConfig, train
from .hookspecs import hookimpl
from .model import SegmentationModel

__all__ = [
    "Feature",
    "FeatureExtractor",
    "FeatureInfo",
    "SegmentationModel",
    "TrainConfig",
    "__version__",
    "create",
    "evaluate",
    "hookimpl",
    "list_backbones",
    "list_heads",
    "list_models",
    "model_info",
    "predict",
    "train",
]
