"""torchvision ResNets as backbones, dilated to output stride 8, 16 or 32."""

from __future__ import annotations

from functools import partial
from typing import Literal

from torch import nn

from ..errors import UsageError
from ..hookspecs import hookimpl
from .extractor import Feature, FeatureExtractor

# replace_stride_with_dilation for layer2..layer4 at each output stride
_DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
_BOTTLENECK = ("resnet50", "resnet101", "resnet152")
_BASIC = ("resnet18", "resnet34")


def resnet_backbone(
    arch: str,
    *,
    output_stride: int | None = None,
    dilation: Literal["torchvision", "uniform"] | None = None,
    pretrained: bool = False,
) -> FeatureExtractor:
    """torchvision ResNet returning the stem's ``relu`` and layer1..layer4 (reductions 2, 4, 8,
    16, 32 at output stride 32).

    ``output_stride`` 8 or 16 dilates the last stages; it defaults to 8 for bottleneck ResNets and
    32 for BasicBlock ones. ``dilation="torchvision"`` (the default for bottleneck ResNets) dilates
    as torchvision's segmentation models do (a stage's first block keeps the previous rate);
    ``"uniform"`` gives every convolution of a dilated stage the same rate (stride 1, dilation
    ``stage stride / output_stride``), as segmentation_models_pytorch does; BasicBlock ResNets (18,
    34), which torchvision refuses to dilate, are always dilated that way. ``pretrained`` loads
    torchvision's IMAGENET1K_V1 weights (those its segmentation models start from).
    """
    import torchvision.models as tvm

    basic = arch in _BASIC
    if output_stride is None:
        output_stride = 32 if basic else 8
    if output_stride not in _DILATION:
        raise UsageError(f"{arch}: output_stride must be 8, 16 or 32, got {output_stride!r}")
    if dilation is None:
        dilation = "uniform" if basic else "torchvision"
    if dilation not in ("torchvision", "uniform"):
        raise UsageError(f"{arch}: dilation must be 'torchvision' or 'uniform', got {dilation!r}")
    if basic and dilation == "torchvision" and output_stride != 32:
        raise UsageError(
            f"{arch} is built from BasicBlocks, which torchvision cannot dilate: use dilation='uniform', "
            "output_stride=32 or a bottleneck ResNet (resnet50, resnet101, resnet152)"
        )
    weights = "IMAGENET1K_V1" if pretrained else None
    tv_dilation = _DILATION[output_stride if dilation == "torchvision" else 32]
    net = getattr(tvm, arch)(weights=weights, replace_stride_with_dilation=tv_dilation)
    if dilation == "uniform":
        for i, stage_stride in ((3, 16), (4, 32)):
            if stage_stride > output_stride:
                _dilate_uniformly(getattr(net, f"layer{i}"), stage_stride // output_stride)
    widths = (64, 128, 256, 512) if basic else (256, 512, 1024, 2048)
    reductions = [min(r, output_stride) for r in (4, 8, 16, 32)]
    layers = [f"layer{i}" for i in range(1, 5)]
    # The stem's relu (stride 2) comes first: U-Net-like heads take it as their finest skip.
    info = [Feature("relu", 64, 2, "relu")]
    info += [Feature(n, c, r, n) for n, c, r in zip(layers, widths, reductions, strict=True)]
    # No parameters, so the state_dict stays torchvision's: the forward stops once layer4 is
    # captured, or (under torch.compile) runs on through these at the cost of a view.
    net.avgpool, net.fc = nn.Identity(), nn.Identity()
    # Forward hooks on torchvision's own forward rather than an FX trace: no tracing cost at
    # build time (a ResNet-101 trace takes longer than loading its weights) and torchvision's
    # in-place residual additions, which a trace turns into new tensors.
    return FeatureExtractor(net, ["relu", *layers], feature_info=info, method="hooks")


def _dilate_uniformly(stage: nn.Module, rate: int) -> None:
    """Every convolution of ``stage`` at stride 1 and dilation ``rate`` (padding kept "same")."""
    for conv in stage.modules():
        if isinstance(conv, nn.Conv2d):
            conv.stride = (1, 1)
            conv.dilation = (rate, rate)
            conv.padding = tuple((k // 2) * rate for k in conv.kernel_size)


@hookimpl
def register_backbones(register):
    for arch in (*_BASIC, *_BOTTLENECK):
        default_os = 32 if arch in _BASIC else 8
        register(
            arch,
            partial(resnet_backbone, arch),
            description=f"torchvision {arch}, features relu, layer1..layer4, output stride {default_os} by default",
        )
