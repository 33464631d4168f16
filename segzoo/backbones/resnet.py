"""torchvision ResNets as backbones, dilated to output stride 8, 16 or 32."""

from __future__ import annotations

from functools import partial

from torch import nn

from ..hookspecs import hookimpl
from .extractor import Feature, FeatureExtractor

# replace_stride_with_dilation for layer2..layer4 at each output stride
_DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
_BOTTLENECK = ("resnet50", "resnet101", "resnet152")
_BASIC = ("resnet18", "resnet34")


def resnet_backbone(
    arch: str, *, output_stride: int | None = None, pretrained: bool = False
) -> FeatureExtractor:
    """torchvision ResNet returning layer1..layer4 (reductions 4, 8, 16, 32 at output stride 32).

    ``output_stride`` 8 or 16 dilates the last stages as torchvision's segmentation models do; it
    defaults to 8 for bottleneck ResNets. BasicBlock ResNets (18, 34) cannot be dilated
    (torchvision refuses it), so they only run at 32. ``pretrained`` loads torchvision's
    IMAGENET1K_V1 weights (those its segmentation models start from).
    """
    import torchvision.models as tvm

    basic = arch in _BASIC
    if output_stride is None:
        output_stride = 32 if basic else 8
    if output_stride not in _DILATION:
        raise ValueError(f"{arch}: output_stride must be 8, 16 or 32, got {output_stride!r}")
    if basic and output_stride != 32:
        raise ValueError(
            f"{arch} is built from BasicBlocks, which torchvision cannot dilate: use output_stride=32 "
            "or a bottleneck ResNet (resnet50, resnet101, resnet152)"
        )
    weights = "IMAGENET1K_V1" if pretrained else None
    net = getattr(tvm, arch)(weights=weights, replace_stride_with_dilation=_DILATION[output_stride])
    widths = (64, 128, 256, 512) if basic else (256, 512, 1024, 2048)
    reductions = [min(r, output_stride) for r in (4, 8, 16, 32)]
    layers = [f"layer{i}" for i in range(1, 5)]
    info = [Feature(n, c, r, n) for n, c, r in zip(layers, widths, reductions, strict=True)]
    # No parameters, so the state_dict stays torchvision's: the forward stops once layer4 is
    # captured, or (under torch.compile) runs on through these at the cost of a view.
    net.avgpool, net.fc = nn.Identity(), nn.Identity()
    # Forward hooks on torchvision's own forward rather than an FX trace: no tracing cost at
    # build time (a ResNet-101 trace takes longer than loading its weights) and torchvision's
    # in-place residual additions, which a trace turns into new tensors.
    return FeatureExtractor(net, layers, feature_info=info, method="hooks")


@hookimpl
def register_backbones(register):
    for arch in (*_BASIC, *_BOTTLENECK):
        default_os = 32 if arch in _BASIC else 8
        register(
            arch,
            partial(resnet_backbone, arch),
            description=f"torchvision {arch}, features layer1..layer4, output stride {default_os} by default",
        )
