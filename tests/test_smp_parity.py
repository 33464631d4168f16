"""smp 0.6.0 models -> ``segzoo convert smp`` -> ``segzoo.create("local-dir:...")`` give smp's outputs.

Random weights and BatchNorm statistics, eval mode, fp32; relative error <= 1e-5 and equal parameter
counts, for all twelve architectures on smp's native resnet34 (torchvision keys) and a timm encoder.
"""

from __future__ import annotations

import json

import pytest
import torch

import segzoo
from segzoo.errors import ConfigError, UsageError
from tests.conftest import randomize_bn_stats

smp = pytest.importorskip("segmentation_models_pytorch")
pytestmark = pytest.mark.slow  # each converts and runs two models (3-15 s on 2 shared cores)
pytest.importorskip("segzoo_smp_heads")

# smp class, extra init kwargs, input size (PAN's pyramid pools the stride-16 map thrice: 160 makes
# it 10 -> 5 -> 2 -> 1, odd sides included)
ARCHS = [
    ("Unet", {}, 64),
    ("UnetPlusPlus", {}, 64),
    ("MAnet", {}, 64),
    ("Linknet", {}, 64),
    ("FPN", {}, 64),
    ("PSPNet", {}, 64),
    ("DeepLabV3", {}, 64),
    ("DeepLabV3Plus", {}, 64),
    ("PAN", {}, 160),
    ("UPerNet", {}, 64),
    ("Segformer", {}, 64),
]
# Options that change the structure, each once.
VARIANTS = [
    ("Unet", {"decoder_attention_type": "scse", "decoder_channels": [64, 32, 16], "encoder_depth": 3}, 64),
    ("UnetPlusPlus", {"decoder_use_norm": "identity", "decoder_interpolation": "bilinear"}, 64),
    ("FPN", {"decoder_merge_policy": "cat"}, 64),
    ("PSPNet", {"encoder_depth": 5, "upsampling": 32}, 64),
    ("DeepLabV3", {"encoder_output_stride": 16, "decoder_aspp_separable": True}, 64),
    ("DeepLabV3Plus", {"encoder_output_stride": 8, "decoder_aspp_separable": False}, 64),
    ("PAN", {"encoder_output_stride": 32}, 288),
]


def smp_model(cls: str, encoder: str, classes: int = 3, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(smp, cls)(encoder_name=encoder, encoder_weights=None, classes=classes, **kwargs)
    with torch.no_grad():  # smp initialises some layers to constants: make every tensor count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return randomize_bn_stats(model).eval()


def check_parity(tmp_path, model: torch.nn.Module, size: int) -> segzoo.SegmentationModel:
    src, out = tmp_path / "smp", tmp_path / "segzoo"
    model.save_pretrained(src)
    from segzoo_smp_heads.convert import convert_smp

    convert_smp(src, outdir=out)
    ours = segzoo.create(f"local-dir:{out}").eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want, got = model(x), ours(x)["out"]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    return ours


@pytest.mark.parametrize(("cls", "kwargs", "size"), ARCHS, ids=[a[0] for a in ARCHS])
def test_resnet34(tmp_path, cls, kwargs, size):
    check_parity(tmp_path, smp_model(cls, "resnet34", **kwargs), size)


@pytest.mark.parametrize(("cls", "kwargs", "size"), ARCHS, ids=[a[0] for a in ARCHS])
def test_timm_resnet18(tmp_path, cls, kwargs, size):
    check_parity(tmp_path, smp_model(cls, "tu-resnet18", **kwargs), size)


@pytest.mark.parametrize(("cls", "kwargs", "size"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_options(tmp_path, cls, kwargs, size):
    check_parity(tmp_path, smp_model(cls, "resnet18", **kwargs), size)


@pytest.mark.parametrize("cls", ["Unet", "UPerNet", "Segformer"])
def test_timm_encoder_without_stride2_stage(tmp_path, cls):
    """ConvNeXt has no stride-2 feature: smp feeds an empty map there, segzoo does the same."""
    check_parity(tmp_path, smp_model(cls, "tu-convnext_atto"), 64)


def write_config(tmp_path, **config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("config", "error", "words"),
    [
        ({"_model_class": "Nope", "encoder_name": "resnet34"}, ConfigError, "_model_class"),
        ({"_model_class": "Unet", "encoder_name": "resnet34", "bogus": 1}, ConfigError, "bogus"),
        ({"_model_class": "Unet", "encoder_name": "resnet34", "classes": -1}, ConfigError, "classes"),
        (
            {"_model_class": "Unet", "encoder_name": "resnet34", "decoder_channels": [1]},
            ConfigError,
            "decoder",
        ),
        (
            {"_model_class": "Unet", "encoder_name": "resnet34", "activation": "sigmoid"},
            ConfigError,
            "activation",
        ),
        ({"_model_class": "FPN", "encoder_name": "efficientnet-b0"}, UsageError, "efficientnet-b0"),
        ({"_model_class": "FPN", "encoder_name": "tu-not_a_model"}, UsageError, "not_a_model"),
        (
            {"_model_class": "PAN", "encoder_name": "resnet34", "encoder_output_stride": 8},
            ConfigError,
            "stride",
        ),
        (
            {"_model_class": "Unet", "encoder_name": "resnet34", "encoder_depth": 3},
            ConfigError,
            "cannot build",
        ),
        ({"_model_class": "DPT", "encoder_name": "resnet34"}, UsageError, "ViT"),
    ],
)
def test_untrusted_config_is_refused_with_one_clear_error(tmp_path, config, error, words):
    from segzoo_smp_heads.convert import convert_smp

    with pytest.raises(error, match=words):
        convert_smp(write_config(tmp_path, **config), outdir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("readout", ["cat", "add", "ignore"])
def test_dpt_on_a_timm_vit(tmp_path, readout):
    small = {"decoder_intermediate_channels": [32, 64, 128, 128], "decoder_fusion_channels": 32}
    model = smp_model("DPT", "tu-vit_tiny_patch16_224", img_size=64, decoder_readout=readout, **small)
    ours = check_parity(tmp_path, model, 64)
    with torch.no_grad():  # and any other size, which smp refuses
        assert ours(torch.randn(1, 3, 75, 61))["out"].shape == (1, 3, 75, 61)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from segzoo.errors import WeightsError
    from segzoo_smp_heads.convert import convert_smp

    smp_model("Linknet", "resnet18").save_pretrained(tmp_path / "smp")
    path = tmp_path / "smp" / "model.safetensors"
    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if k != "decoder.blocks.0.block.0.0.weight"}, str(path))
    with pytest.raises(
        WeightsError, match=r"missing \['classifier\.decoder\.blocks\.0\.block\.0\.0\.weight'\]"
    ):
        convert_smp(tmp_path / "smp", outdir=tmp_path / "out")
    save_file({**state, "classification_head.3.weight": torch.zeros(1)}, str(path))
    with pytest.raises(WeightsError, match="classification_head.3.weight"):
        convert_smp(tmp_path / "smp", outdir=tmp_path / "out")
    save_file({**state, "segmentation_head.0.weight": torch.zeros(1)}, str(path))
    with pytest.raises(WeightsError, match="shapes differ"):
        convert_smp(tmp_path / "smp", outdir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
