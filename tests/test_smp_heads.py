"""The segzoo-smp-heads plugin beyond smp parity: any input size, exportable pyramid pooling, the
stages a head reads from each kind of backbone, and ``segzoo convert smp`` on the command line."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import segzoo
from segzoo.cli import main

heads = pytest.importorskip("segzoo_smp_heads")
from segzoo_smp_heads._common import adaptive_avg_pool2d, encoder_stages  # noqa: E402
from segzoo_smp_heads.pan import HalvingMaxPool2d  # noqa: E402


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (6, 6), (13, 4), (75, 61)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_matrix_pooling_equals_adaptive_avg_pool(size, bins):
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins))


@pytest.mark.parametrize("size", [(1, 1), (1, 2), (2, 3), (5, 7), (6, 6), (13, 4)])
def test_pan_pooling_is_smps_max_pool_but_keeps_one_pixel_sides(size):
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    if min(size) > 1:
        expected = F.max_pool2d(x, 2, 2)  # smp's nn.MaxPool2d(2)
    else:  # a side of one pixel stays: the max over the window's pixels that exist
        expected = F.max_pool2d(x, 2, 2, ceil_mode=True)[..., : max(1, size[0] // 2), : max(1, size[1] // 2)]
    assert torch.equal(HalvingMaxPool2d()(x), expected)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["pspnet", "upernet"])
def test_pyramid_pooling_exports_with_dynamic_height_and_width(head):
    """Exported once at 64 x 96, the program is right at sizes whose bins do not divide the map."""
    torch.manual_seed(0)
    model = segzoo.create(head, backbone="resnet18", num_classes=3).eval()
    dims = {2: torch.export.Dim("H", min=64, max=1024), 3: torch.export.Dim("W", min=64, max=1024)}
    program = torch.export.export(model, (torch.randn(1, 3, 64, 96),), dynamic_shapes={"x": dims})
    for size in [(160, 200), (75, 161)]:  # stride-32 maps 5 x 7 and 3 x 6: bins 2, 3, 6 straddle
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x)["out"], model(x)["out"])


@pytest.mark.slow
@pytest.mark.parametrize("head", sorted(heads.HEADS))
def test_any_input_size(head):
    """smp refuses sizes not divisible by 32 (smp issue #165); these heads resize to what they meet."""
    model = segzoo.create(head, backbone="resnet18", num_classes=2, aux=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 75, 61))
    assert out["out"].shape == out["aux"].shape == (1, 2, 75, 61)


def _stages(backbone: str, **kwargs) -> list[str | None]:
    with torch.device("meta"):
        info = segzoo.create("fcn", backbone=backbone, num_classes=1, **kwargs).feature_info
    return [None if f is None else f.name for f in encoder_stages(info)]


def test_stages_follow_smps_encoders():
    assert _stages("resnet34") == ["relu", "layer1", "layer2", "layer3", "layer4"]
    # dilated: the deepest reduction fills the last stages, as smp's make_dilated leaves them
    assert _stages("resnet34", output_stride=8) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert _stages("timm:convnext_atto") == [None, "0", "1", "2", "3"]  # timm features by position
    assert _stages("mobilenet_v3_small") == ["0", "1", "2", "9", "12"]


def test_resnet_uniform_dilation_keeps_keys_and_reaches_the_stride():
    plain = segzoo.create("fcn", backbone="resnet34", num_classes=2)
    dilated = segzoo.create("fcn", backbone="resnet34", num_classes=2, output_stride=8)
    assert dilated.feature_info.reductions() == [2, 4, 8, 8, 8]
    assert plain.state_dict().keys() == dilated.state_dict().keys()
    assert dilated.backbone.layer4[1].conv1.dilation == (4, 4)
    with torch.no_grad():
        assert dilated.backbone(torch.randn(1, 3, 64, 64))["layer4"].shape[-1] == 8


@pytest.mark.slow
def test_segzoo_convert_smp_on_the_command_line(tmp_path, capsys):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    ref = smp.Linknet(encoder_name="resnet18", encoder_weights=None, classes=2).eval()
    ref.save_pretrained(tmp_path / "smp")
    assert main(["convert", "smp", str(tmp_path / "smp"), str(tmp_path / "out")]) == 0
    ours = segzoo.create(f"local-dir:{tmp_path / 'out'}").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], ref(x), rtol=1e-5, atol=1e-5)
    # an encoder segzoo does not build: one line naming it and what segzoo offers, exit status 2
    config = (tmp_path / "smp" / "config.json").read_text().replace('"resnet18"', '"mit_b0"')
    (tmp_path / "smp" / "config.json").write_text(config)
    capsys.readouterr()
    assert main(["convert", "smp", str(tmp_path / "smp"), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'mit_b0'" in err and "tu-<timm model>" in err
    assert not (tmp_path / "out2").exists()


def test_pspnet_takes_channel_counts_that_do_not_divide_by_four():
    """A pruned ResNet's stride-8 feature has 142 channels: smp's 2 * channels would not fit."""
    from segzoo_smp_heads.pspnet import build_pspnet

    info = segzoo.FeatureInfo([segzoo.Feature(f"s{r}", c, r, f"s{r}") for c, r in [(26, 4), (142, 8)]])
    head = build_pspnet(info, 3, encoder_depth=3).eval()
    with torch.no_grad():
        out = head(torch.randn(1, 142, 8, 8))
    assert out.shape == (1, 3, 64, 64)


def test_a_backbone_without_the_deepest_stage_is_refused_as_incompatible():
    from segzoo.backbones.matrix import INCOMPATIBLE, cause

    info = segzoo.FeatureInfo([segzoo.Feature(f"s{r}", 8, r, f"s{r}") for r in (8, 11)])  # CrossViT's
    with pytest.raises(ValueError, match="needs a backbone feature at encoder stage 5") as err:
        encoder_stages(info)
    assert cause(f"build: ValueError: {err.value}") == INCOMPATIBLE
