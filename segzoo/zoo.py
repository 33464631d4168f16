"""The built-in model recipes: torchvision's six segmentation models, exactly."""

from __future__ import annotations

from ._constants import VOC_LABELS
from .hookspecs import hookimpl

_TV = "https://download.pytorch.org/models/"
# torchvision's COCO-with-VOC-labels checkpoints: file, the sha256 prefix torchvision publishes in
# the file name, and its published metrics on COCO val2017 (VOC labels), in percent.
_TV_WEIGHTS = {
    "fcn_resnet50": ("fcn_resnet50_coco-1167a1af.pth", 60.5, 91.4, True),
    "fcn_resnet101": ("fcn_resnet101_coco-7ecb50ca.pth", 63.7, 91.9, True),
    "deeplabv3_resnet50": ("deeplabv3_resnet50_coco-cd0a2569.pth", 66.4, 92.4, True),
    "deeplabv3_resnet101": ("deeplabv3_resnet101_coco-586e9e4e.pth", 67.4, 92.4, True),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large-fc3c493d.pth", 60.3, 91.2, True),
    "lraspp_mobilenet_v3_large": ("lraspp_mobilenet_v3_large-d234d4ea.pth", 57.9, 91.2, False),
}


def tv_weights(name: str) -> dict:
    """The ``tv_coco_voc`` weight tag of a torchvision recipe."""
    filename, miou, pixel_acc, aux = _TV_WEIGHTS[name]
    return {
        "tv_coco_voc": {
            "url": _TV + filename,
            "sha256": filename.rsplit("-", 1)[1].split(".")[0],
            "num_classes": 21,
            "aux": aux,
            "labels": VOC_LABELS,
            "metrics": {"dataset": "COCO-val2017-VOC-labels", "miou": miou, "pixel_acc": pixel_acc},
            "license": "bsd-3-clause",
            "source": f"torchvision {name} COCO_WITH_VOC_LABELS_V1 ({_TV + filename})",
            "description": "torchvision's weights trained on the COCO subset with the 20 Pascal VOC categories",
        }
    }


@hookimpl
def register_models(register):
    for arch in ("resnet50", "resnet101"):
        register(
            f"fcn_{arch}",
            backbone=arch,
            head="fcn",
            backbone_kwargs={"output_stride": 8},
            labels=VOC_LABELS,
            weights=tv_weights(f"fcn_{arch}"),
            description=f"FCN on a dilated {arch} (output stride 8), torchvision's fcn_{arch}",
        )
        register(
            f"deeplabv3_{arch}",
            backbone=arch,
            head="deeplabv3",
            backbone_kwargs={"output_stride": 8},
            head_kwargs={"atrous_rates": (12, 24, 36)},
            labels=VOC_LABELS,
            weights=tv_weights(f"deeplabv3_{arch}"),
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
        weights=tv_weights("deeplabv3_mobilenet_v3_large"),
        description="DeepLabV3 on a dilated MobileNetV3-Large, torchvision's deeplabv3_mobilenet_v3_large",
    )
    register(
        "lraspp_mobilenet_v3_large",
        backbone="mobilenet_v3_large",
        head="lraspp",
        backbone_kwargs={"output_stride": 16},
        labels=VOC_LABELS,
        weights=tv_weights("lraspp_mobilenet_v3_large"),
        description="Lite R-ASPP on a dilated MobileNetV3-Large, torchvision's lraspp_mobilenet_v3_large",
    )
