"""SegmentationModel: backbone features, head(s), upsampling to the input size."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from . import hub
from ._folder import save_pretrained
from .backbones.extractor import FeatureExtractor
from .errors import UsageError

__all__ = ["SegmentationModel"]


class SegmentationModel(nn.Module):
    """``backbone -> named features -> head (and aux head) -> bilinear upsample to the input``.

    ``forward(x)`` returns ``{"out": N x C x H x W}`` (and ``"aux"`` when there is an auxiliary
    head) for any input size. Each head takes the features named in its ``in_features``. The
    attribute names (``backbone``, ``classifier``, ``aux_classifier``) are torchvision's, so
    torchvision checkpoints load as they are.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        *,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        if info is None or not hasattr(info, "names"):
            raise UsageError(
                f"the backbone ({type(backbone).__name__}) has no feature_info: wrap it, e.g. "
                "segzoo.FeatureExtractor(net, return_nodes={'layer4': 'out'})"
            )
        for role, h in (("head", head), ("aux_head", aux_head)):
            if h is None:
                continue
            wanted = getattr(h, "in_features", None)
            if not wanted:
                raise UsageError(
                    f"the {role} ({type(h).__name__}) must declare in_features, the feature names it takes"
                )
            missing = [n for n in wanted if n not in info.names()]
            if missing:
                raise UsageError(
                    f"the {role} takes features {missing} that the backbone does not return "
                    f"(it returns {info.names()})"
                )
        self.backbone = backbone
        # FeatureExtractor.forward(x, names); a subclass that overrides forward(x) keeps all features
        self._select_features = isinstance(backbone, FeatureExtractor) and (
            "names" in inspect.signature(type(backbone).forward).parameters
        )
        self.classifier = head
        self.aux_classifier = aux_head
        self.config: dict[str, Any] = dict(config or {})

    @property
    def head(self) -> nn.Module:
        return self.classifier

    @property
    def aux_head(self) -> nn.Module | None:
        return self.aux_classifier

    @property
    def feature_info(self):
        return self.backbone.feature_info

    @property
    def num_classes(self) -> int | None:
        return self.config.get("num_classes")

    @property
    def labels(self) -> list[str] | None:
        return self.config.get("labels")

    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``model.safetensors``, ``config.json`` and ``README.md`` (atomically); reload
        with ``segzoo.create("local-dir:DIR")``. A non-empty folder that is not a segzoo folder is
        refused unless ``overwrite=True``."""
        return save_pretrained(self, directory, overwrite=overwrite)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        token: str | None = None,
    ) -> str:
        """Push the model to a Hugging Face Hub repo (created if needed) in one commit; returns
        the commit URL. Reload with ``segzoo.create("hf-hub:REPO_ID")``."""
        return hub.push_to_hub(
            self, repo_id, private=private, revision=revision, commit_message=commit_message, token=token
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.ndim != 4:
            raise UsageError(
                f"expected a batch of images N x C x H x W, got a tensor of shape {tuple(x.shape)}"
            )
        size = x.shape[-2:]
        if self._select_features:
            # only what the heads read: a head on stride 8 does not pay for the deeper stages
            names = list(self.classifier.in_features)
            if self.aux_classifier is not None:
                names += [n for n in self.aux_classifier.in_features if n not in names]
            features = self.backbone(x, names)
        else:
            features = self.backbone(x)
        out = {"out": self._predict(self.classifier, features, size)}
        if self.aux_classifier is not None:
            out["aux"] = self._predict(self.aux_classifier, features, size)
        return out

    @staticmethod
    def _predict(head: nn.Module, features: dict[str, Tensor], size) -> Tensor:
        logits = head(*[features[n] for n in head.in_features])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
