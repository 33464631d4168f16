"""Backbones: the generic FeatureExtractor and the built-in families that use it."""

from .extractor import Feature, FeatureExtractor, FeatureInfo

__all__ = ["Feature", "FeatureExtractor", "FeatureInfo"]
