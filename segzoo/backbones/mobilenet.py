"""torchvision MobileNetV3 as backbones, dilated as torchvision's segmentation models do."""

from __future__ import annotations

from functools import partial

from ..errors import UsageError
from ..hookspecs import hookimpl
from .extractor import Feature, FeatureExtractor


def mobilenet_v3_backbone(
    arch: str, *, output_stride: int = 16, pretrained: bool = False
) -> FeatureExtractor:
    """torchvision MobileNetV3 ``features``, returning the first block of every stage (as
    torchvision's segmentation builders pick them) and the last convolution.

    Feature names are the block indices in ``features``; ``aux`` is the first stride-8 block, as
    in torchvision. ``output_stride`` 16 dilates the last stage, 32 leaves it as is.
    ``pretrained`` loads torchvision's IMAGENET1K_V1 weights.
    """
    import torchvision.models as tvm

    if output_stride not in (16, 32):
        raise UsageError(
            f"{arch}: output_stride must be 16 (dilated last stage) or 32, got {output_stride!r}"
        )
    weights = "IMAGENET1K_V1" if pretrained else None
    features = getattr(tvm, arch)(weights=weights, dilated=output_stride == 16).features
    # Strided blocks carry _is_cn; with the stem and the last conv they mark the stages.
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    info = []
    reduction = 1
    for n, i in enumerate(stages):
        if n < len(stages) - 1:
            reduction = min(reduction * 2, output_stride)
        info.append(Feature(str(i), features[i].out_channels, reduction, str(i)))
    aux = str(stages[-4])
    return FeatureExtractor(
        features,
        [f.name for f in info],
        feature_info=info,
        roles={"aux": aux, "low": aux},
        method="hooks",  # as for the ResNets: no trace to pay for, torchvision's own forward
    )


@hookimpl
def register_backbones(register):
    for arch in ("mobilenet_v3_large", "mobilenet_v3_small"):
        register(
            arch,
            partial(mobilenet_v3_backbone, arch),
            description=f"torchvision {arch} features, last stage dilated (output stride 16)",
        )
