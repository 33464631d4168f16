"""The built-in model recipes: torchvision's six segmentation models, exactly."""

from __future__ import annotations

from .hookspecs import hookimpl

# torchvision's _VOC_CATEGORIES, the labels of its COCO-with-VOC-labels weights
VOC_LABELS = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@hookimpl
def register_models(register):
    for arch in ("resnet50", "resnet101"):
        register(
            f"fcn_{arch}",
            backbone=arch,
            head="fcn",
            backbone_kwargs={"output_stride": 8},
            labels=VOC_LABELS,
            description=f"FCN on a dilated {arch} (output stride 8), torchvision's fcn_{arch}",
        )
        register(
            f"deeplabv3_{arch}",
            backbone=arch,
            head="deeplabv3",
            backbone_kwargs={"output_stride": 8},
            head_kwargs={"atrous_rates": (12, 24, 36)},
            labels=VOC_LABELS,
            description=f"DeepLabV3 on a dilated {arch} (output stride 8), torchvision's deeplabv3_{arch}",
        )
    register(
        "deeplabv3_mobilenet_v3_large",
        backbone="mobilenet_v3_large",
        head="deeplabv3",
        backbone_kwargs={"output_stride": 16},
        # torchvision keeps the output-stride-8 rates here although the backbone runs at 16
        head_kwargs={"atrous_rates": (12, 24, 36)},
        labels=VOC_LABELS,
        description="DeepLabV3 on a dilated MobileNetV3-Large, torchvision's deeplabv3_mobilenet_v3_large",
    )
    register(
        "lraspp_mobilenet_v3_large",
        backbone="mobilenet_v3_large",
        head="lraspp",
        backbone_kwargs={"output_stride": 16},
        labels=VOC_LABELS,
        description="Lite R-ASPP on a dilated MobileNetV3-Large, torchvision's lraspp_mobilenet_v3_large",
    )
