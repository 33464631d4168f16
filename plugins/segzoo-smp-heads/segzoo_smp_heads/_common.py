"""What every smp-style head shares: the encoder stages it reads, conv-norm-ReLU blocks, the
segmentation head, and adaptive average pooling that exports with dynamic shapes.

Module and parameter names follow segmentation_models_pytorch 0.6.0 (``decoder.*``,
``segmentation_head.*``) so that its checkpoints load by a prefix rename.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

# smp's encoders give five stages at reductions 2, 4, 8, 16, 32 (dilated ones repeat the last).
STAGE_REDUCTIONS = (2, 4, 8, 16, 32)
NORMS = ("batchnorm", "identity")


def encoder_stages(feature_info: segzoo.FeatureInfo, depth: int = 5) -> list[segzoo.Feature | None]:
    """The backbone features standing for smp's encoder stages 1..``depth`` (None where the
    backbone has no feature at that stage, e.g. stride 2 of a ConvNeXt; smp feeds an empty map).

    Stage ``i`` is the last feature at reduction ``2**i``; the features at a dilated backbone's
    deepest reduction fill that stage and the ones after it, as smp's dilated encoders do.
    """
    if not 1 <= depth <= 5:
        raise ValueError(f"encoder_depth must be 1..5, got {depth!r}")
    feats = [f for f in feature_info if f.reduction in STAGE_REDUCTIONS]
    if not feats:
        raise ValueError(
            f"this head needs backbone features at reductions {STAGE_REDUCTIONS}; the backbone has "
            f"{[(f.name, f.reduction) for f in feature_info]}"
        )
    deepest = max(f.reduction for f in feats)
    slots: list[segzoo.Feature | None] = [None] * 5
    first_deep = STAGE_REDUCTIONS.index(deepest)
    for i, r in enumerate(STAGE_REDUCTIONS[:first_deep]):
        at_r = [f for f in feats if f.reduction == r]
        slots[i] = at_r[-1] if at_r else None
    deep = [f for f in feats if f.reduction == deepest][-(5 - first_deep) :]
    slots[first_deep : first_deep + len(deep)] = deep
    if slots[depth - 1] is None:
        raise ValueError(
            f"this head needs a backbone feature at encoder stage {depth} (reduction "
            f"{STAGE_REDUCTIONS[depth - 1]}, or a dilated backbone's deepest feature); the backbone has "
            f"{[(f.name, f.reduction) for f in feature_info]}"
        )
    return slots[:depth]


def stage_channels(stages: Sequence[segzoo.Feature | None]) -> list[int]:
    """smp's ``encoder.out_channels``: the input (3) and then each stage (0 where it is missing)."""
    return [3, *(0 if f is None else f.channels for f in stages)]


class StageHead(nn.Module):
    """A head reading smp-style encoder stages: ``forward(*features)`` rebuilds smp's feature list
    ``[input, stage1, ..., stageN]`` (empty maps for missing stages and for the input, which the
    decoders only measure) and runs ``decode`` then ``segmentation_head``."""

    def __init__(self, stages: Sequence[segzoo.Feature | None], reads: Sequence[int] | None = None) -> None:
        """``reads``: the stage indices (0-based) the decoder uses; default all."""
        super().__init__()
        if stages[-1] is None:
            raise ValueError(f"the backbone has no feature for the deepest stage ({len(stages)})")
        wanted = range(len(stages)) if reads is None else [i % len(stages) for i in reads]
        self._present = tuple(i for i in sorted(set(wanted)) if stages[i] is not None)
        self._num_stages = len(stages)
        self.in_features = tuple(stages[i].name for i in self._present)  # type: ignore[union-attr]

    def stages(self, feats: Sequence[Tensor]) -> list[Tensor]:
        out: list[Tensor | None] = [None] * self._num_stages
        for i, t in zip(self._present, feats, strict=True):
            out[i] = t
        deeper = feats[-1]
        for i in range(self._num_stages - 1, -1, -1):
            t = out[i]
            if t is None:
                t = out[i] = _empty_at_twice(deeper)
            deeper = t
        return [_empty_at_twice(deeper), *out]  # type: ignore[list-item]

    def decode(self, features: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, *feats: Tensor) -> Tensor:
        return self.segmentation_head(self.decode(self.stages(feats)))


def _empty_at_twice(x: Tensor) -> Tensor:
    n, _, h, w = x.shape
    return x.new_empty(n, 0, 2 * h, 2 * w)


def norm_layer(use_norm: bool | str, channels: int) -> nn.Module:
    if use_norm is True or use_norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    if use_norm is False or use_norm == "identity":
        return nn.Identity()
    raise ValueError(f"use_norm must be 'batchnorm', 'identity', True or False, got {use_norm!r}")


def conv_norm_relu(
    cin: int, cout: int, kernel_size: int, *, padding: int = 0, use_norm: bool | str = "batchnorm"
) -> nn.Sequential:
    """Conv (biased only without a norm), norm, ReLU: smp's ``Conv2dReLU`` layout."""
    norm = norm_layer(use_norm, cout)
    conv = nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=isinstance(norm, nn.Identity))
    return nn.Sequential(conv, norm, nn.ReLU(inplace=True))


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze-excitation (Roy et al., 2018)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.cSE = nn.Sequential(
            GlobalAvgPool(),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )
        self.sSE = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.cSE(x) + x * self.sSE(x)


class Attention(nn.Module):
    def __init__(self, attention_type: str | None, channels: int) -> None:
        super().__init__()
        if attention_type is None:
            self.attention: nn.Module = nn.Identity()
        elif attention_type == "scse":
            self.attention = SCSE(channels)
        else:
            raise ValueError(f"attention_type must be None or 'scse', got {attention_type!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x)


def segmentation_head(cin: int, num_classes: int, kernel_size: int, upsampling: float = 1) -> nn.Sequential:
    """Conv to the classes, then (when ``upsampling > 1``) bilinear upsampling with aligned
    corners, as smp's ``SegmentationHead``."""
    up: nn.Module = nn.Identity()
    if upsampling > 1:
        up = nn.Upsample(scale_factor=upsampling, mode="bilinear", align_corners=True)
    return nn.Sequential(nn.Conv2d(cin, num_classes, kernel_size, padding=kernel_size // 2), up)


class GlobalAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(1)`` as a mean, which exports at every size."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def _bin_matrix(size: Any, bins: int, like: Tensor) -> Tensor:
    """``bins x size`` averaging matrix of adaptive pooling: row i averages the inputs
    ``floor(i*size/bins) <= j < ceil((i+1)*size/bins)``."""
    i = torch.arange(bins, device=like.device).unsqueeze(1)
    j = torch.arange(size, device=like.device).unsqueeze(0)
    start = (i * size) // bins
    end = ((i + 1) * size + bins - 1) // bins
    inside = (j >= start) & (j < end)
    return inside.to(like.dtype) / (end - start).to(like.dtype)


def adaptive_avg_pool2d(x: Tensor, bins: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` as two matrix products (``P_h @ x @ P_w^T``).

    torch.export and ONNX bake adaptive pooling into bins that do not divide the input in for the
    example size (pytorch #42653, #64806); these averaging matrices are built from the input size,
    so the exported graph stays correct at every size.
    """
    if bins == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    ph = _bin_matrix(x.shape[-2], bins, x)
    pw = _bin_matrix(x.shape[-1], bins, x)
    return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))


class AdaptiveAvgPool(nn.Module):
    """An exportable ``nn.AdaptiveAvgPool2d(bins)`` (no parameters)."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = int(bins)

    def forward(self, x: Tensor) -> Tensor:
        return adaptive_avg_pool2d(x, self.bins)

    def extra_repr(self) -> str:
        return f"bins={self.bins}"


def upsample_to(
    x: Tensor, like: Tensor | None, mode: str = "nearest", align_corners: bool | None = None
) -> Tensor:
    """Resize ``x`` to ``like``'s size, or to twice its own without ``like``. smp resizes by a
    scale factor of 2, which needs sizes divisible by 32; at those sizes the results are equal."""
    size = like.shape[-2:] if like is not None else (2 * x.shape[-2], 2 * x.shape[-1])
    if x.shape[1] == 0:  # the empty stand-in of a missing stage, which interpolate refuses
        return x.new_empty(x.shape[0], 0, *size)
    if mode == "nearest":
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)
