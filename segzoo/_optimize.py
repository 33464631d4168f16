"""A faster model for inference: BatchNorm folded into convolutions, channels_last, inference_mode,
bf16 autocast on GPU, optionally torch.compile."""

from __future__ import annotations

import contextlib
import copy
import itertools
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["OptimizedModel", "fuse_conv_bn", "optimize"]


def _fusable(conv: nn.Module, bn: nn.Module) -> bool:
    # exact types only: a BatchNorm subclass (timm's BatchNormAct2d) may do more than normalise
    return type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats


def _block_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Attribute pairs (conv, bn) that a known module's forward applies one right after the other."""
    from torchvision.models import resnet

    if isinstance(module, resnet.Bottleneck):
        return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    if isinstance(module, resnet.BasicBlock):
        return [("conv1", "bn1"), ("conv2", "bn2")]
    # a FeatureExtractor shares the children of the ResNet it wraps, so setting them there works
    if isinstance(module, resnet.ResNet) or isinstance(getattr(module, "_body", None), resnet.ResNet):
        return [("conv1", "bn1")]
    return []


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold eval-mode BatchNorm2d into the Conv2d before it, in place; returns how many were folded.

    Only where the order is certain: consecutive layers of an ``nn.Sequential`` and the blocks of
    torchvision's ResNets. The BatchNorm becomes an ``nn.Identity``.
    """
    if model.training:
        raise ValueError("fuse_conv_bn folds running statistics: call model.eval() first")
    fused = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                conv, bn = module._modules[a], module._modules[b]
                if _fusable(conv, bn):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
                    fused += 1
        for a, b in _block_pairs(module):
            conv, bn = getattr(module, a), getattr(module, b)
            if _fusable(conv, bn):
                setattr(module, a, fuse_conv_bn_eval(conv, bn))
                setattr(module, b, nn.Identity())
                fused += 1
    return fused


class OptimizedModel(nn.Module):
    """The inference-only model :func:`optimize` returns: ``forward(x)`` gives the model's dict of
    float32 outputs under ``torch.inference_mode``; ``config`` is the model's."""

    def __init__(self, model: nn.Module, *, channels_last: bool, autocast: bool, compiled: Any) -> None:
        super().__init__()
        self.model = model
        self.channels_last, self.autocast = channels_last, autocast
        self._run = compiled if compiled is not None else model

    @property
    def config(self) -> dict[str, Any]:
        return getattr(self.model, "config", {})

    def train(self, mode: bool = True) -> OptimizedModel:
        if mode:
            raise ValueError("an optimized model is for inference only: optimize a fresh model to train")
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            bf16 = self.autocast and x.device.type == "cuda"
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ctx:
                out = self._run(x)
            return {k: v.float() for k, v in out.items()} if bf16 else out


def optimize(
    model: nn.Module,
    *,
    fuse: bool = True,
    channels_last: bool = True,
    autocast: bool = True,
    compile: bool = False,
    compile_kwargs: dict[str, Any] | None = None,
) -> OptimizedModel:
    """A copy of ``model`` for inference, as fast as this machine allows.

    BatchNorm is folded into convolutions (``fuse``), weights and inputs are channels_last, every
    call runs under ``torch.inference_mode``; on a GPU it runs in bfloat16 autocast (``autocast``)
    and returns float32. ``compile`` wraps it with ``torch.compile`` (``compile_kwargs`` go there;
    the first calls at each new size compile). On the CPU, in float32, outputs stay within 1e-4
    (relative) of the eager model's. The model itself is left as it was.
    """
    fast = copy.deepcopy(model).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if fuse:
        fuse_conv_bn(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    compiled = torch.compile(fast, **(compile_kwargs or {})) if compile else None
    return OptimizedModel(fast, channels_last=channels_last, autocast=autocast, compiled=compiled).eval()
