"""segmentation_models_pytorch's architectures as segzoo heads, exact to smp 0.6.0, and the
``smp`` checkpoint converter (``segzoo convert smp SRC OUT``)."""

from __future__ import annotations

import segzoo

from .deeplab import build_deeplabv3_smp, build_deeplabv3plus_smp
from .dpt import build_dpt, vit_backbone
from .fpn import build_fpn
from .linknet import build_linknet
from .manet import build_manet
from .pan import build_pan
from .pspnet import build_pspnet
from .segformer import build_segformer
from .unet import build_unet, build_unetplusplus
from .upernet import build_upernet

__version__ = "0.1.0"

# name -> (builder, description); the paper is in each description.
HEADS = {
    "unet": (build_unet, "U-Net decoder (Ronneberger et al., 2015) on the stride-2..32 features"),
    "unetplusplus": (build_unetplusplus, "UNet++ nested dense skips (Zhou et al., 2018)"),
    "manet": (build_manet, "MA-Net position and multi-scale attention (Fan et al., 2020)"),
    "linknet": (build_linknet, "LinkNet additive decoder (Chaurasia and Culurciello, 2017)"),
    "fpn": (build_fpn, "FPN segmentation decoder (Kirillov et al., 2019)"),
    "pspnet": (build_pspnet, "PSPNet pyramid pooling (Zhao et al., 2017), exportable at any size"),
    "pan": (build_pan, "Pyramid Attention Network (Li et al., 2018)"),
    "upernet": (build_upernet, "UPerNet: PPM + FPN fusion (Xiao et al., 2018), exportable at any size"),
    "segformer": (build_segformer, "SegFormer all-MLP decoder (Xie et al., 2021)"),
    "deeplabv3_smp": (build_deeplabv3_smp, "smp's DeepLabV3 (Chen et al., 2017): separable-ASPP option"),
    "deeplabv3plus_smp": (build_deeplabv3plus_smp, "smp's DeepLabV3+ (Chen et al., 2018): separable ASPP"),
    "dpt": (build_dpt, "DPT reassemble + fusion (Ranftl et al., 2021); reads ViT class tokens"),
}


@segzoo.hookimpl
def register_heads(register):
    for name, (builder, description) in HEADS.items():
        register(name, builder, description=description)


# Recipes people reach for: smp's defaults on the backbones its users pick most.
RECIPES = {
    "unet_resnet34": ("unet", "resnet34", {}, {}, "U-Net on ResNet-34, smp's default model"),
    "unetplusplus_resnet34": ("unetplusplus", "resnet34", {}, {}, "UNet++ on ResNet-34"),
    "linknet_resnet34": ("linknet", "resnet34", {}, {}, "LinkNet on ResNet-34"),
    "fpn_resnet50": ("fpn", "resnet50", {"output_stride": 32}, {}, "FPN on ResNet-50"),
    "pspnet_resnet50": (
        "pspnet",
        "resnet50",
        {"output_stride": 8},
        {},
        "PSPNet on a dilated ResNet-50 (output stride 8), as in the paper",
    ),
    "pan_resnet50": ("pan", "resnet50", {"output_stride": 16}, {}, "PAN on ResNet-50 at output stride 16"),
    "upernet_convnext_tiny": ("upernet", "timm:convnext_tiny", {}, {}, "UPerNet on ConvNeXt-T (timm)"),
    "segformer_pvt_v2_b0": (
        "segformer",
        "timm:pvt_v2_b0",
        {},
        {},
        "SegFormer's MLP decoder on PVTv2-B0 (timm has no MiT; PVTv2-B0 has MiT-B0's widths)",
    ),
    "dpt_vit_small_patch16_384": (
        "dpt",
        "timm-vit:vit_small_patch16_384",
        {},
        {},
        "DPT on ViT-S/16 (timm), any input size",
    ),
}


@segzoo.hookimpl
def register_models(register):
    for name, (head, backbone, bb_kwargs, head_kwargs, description) in RECIPES.items():
        register(
            name,
            head=head,
            backbone=backbone,
            backbone_kwargs=bb_kwargs,
            head_kwargs=head_kwargs,
            description=description,
        )


@segzoo.hookimpl
def register_backbones(register):
    register(
        "timm-vit:*",
        vit_backbone,
        description="a whole timm ViT (e.g. timm-vit:vit_tiny_patch16_224): 4 blocks + their class tokens, any size",
    )


from .convert import register_converters  # noqa: E402  (a hook of this plugin too)

__all__ = [
    "HEADS",
    "RECIPES",
    "register_backbones",
    "register_converters",
    "register_heads",
    "register_models",
]
