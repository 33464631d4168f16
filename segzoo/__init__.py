"""segzoo: a plugin-based semantic-segmentation model zoo."""

from __future__ import annotations

from ._factory import create, list_backbones, list_heads, list_models, model_info
from ._optimize import optimize
from ._plugins import list_plugins, register_plugin, unregister_plugin
from ._version import __version__
from .backbones.extractor import Feature, FeatureExtractor, FeatureInfo
from .engine.evaluate import evaluate
from .engine.predict import predict
from .engine.train import TrainConfig, train
from .errors import PluginWarning, SegzooError
from .export import export, load_exported
from .heads.deeplabv3 import ASPP, atrous_rates_for
from .hookspecs import hookimpl
from .model import SegmentationModel

__all__ = [
    "ASPP",
    "Feature",
    "FeatureExtractor",
    "FeatureInfo",
    "PluginWarning",
    "SegmentationModel",
    "SegzooError",
    "TrainConfig",
    "__version__",
    "atrous_rates_for",
    "create",
    "evaluate",
    "export",
    "hookimpl",
    "list_backbones",
    "list_heads",
    "list_models",
    "list_plugins",
    "load_exported",
    "model_info",
    "optimize",
    "predict",
    "register_plugin",
    "train",
    "unregister_plugin",
]
