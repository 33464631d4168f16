"""torchvision's six segmentation models, reproduced exactly: keys, parameter counts, outputs."""

from __future__ import annotations

import pytest
import torch

import segzoo

from .conftest import randomize_bn_stats

TV_MODELS = {
    "fcn_resnet50": True,
    "fcn_resnet101": True,
    "deeplabv3_resnet50": True,
    "deeplabv3_resnet101": True,
    "deeplabv3_mobilenet_v3_large": True,
    "lraspp_mobilenet_v3_large": False,  # torchvision's LRASPP has no auxiliary head
}
CASES = [
    (name, aux) for name, has_aux in TV_MODELS.items() for aux in ((False, True) if has_aux else (False,))
]


def torchvision_model(name: str, num_classes: int = 21, aux: bool = False, seed: int = 0) -> torch.nn.Module:
    """A torchvision model with random weights and random BatchNorm statistics (so that a mixed-up
    BatchNorm would show in the outputs)."""
    import torchvision.models.segmentation as tvs

    torch.manual_seed(seed)
    kwargs = {"aux_loss": aux} if TV_MODELS[name] else {}
    model = getattr(tvs, name)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    return randomize_bn_stats(model).eval()


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    assert err <= rel, f"relative error {err:.3g} > {rel}"


@pytest.mark.parametrize("name,aux", CASES)
def test_state_dict_params_and_outputs_match_torchvision(name, aux):
    tv = torchvision_model(name, aux=aux)
    ours = segzoo.create(name, aux=aux).eval()
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters())
    x = torch.randn(1, 3, 75, 61)  # odd sizes on purpose
    with torch.no_grad():
        got, want = ours(x), tv(x)
    assert set(got) == set(want)
    for key in want:
        assert got[key].shape == want[key].shape == (1, 21, 75, 61)
        assert_close_rel(got[key], want[key])


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "lraspp_mobilenet_v3_large"])
def test_other_num_classes_match_torchvision(name):
    tv = torchvision_model(name, num_classes=5)
    ours = segzoo.create(name, num_classes=5).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close_rel(ours(x)["out"], tv(x)["out"])


def test_param_counts_equal_torchvision_published_counts():
    """The parameter counts torchvision publishes for its weights (which include the aux head)."""
    import torchvision.models.segmentation as tvs

    published = {
        "fcn_resnet50": tvs.FCN_ResNet50_Weights,
        "fcn_resnet101": tvs.FCN_ResNet101_Weights,
        "deeplabv3_resnet50": tvs.DeepLabV3_ResNet50_Weights,
        "deeplabv3_resnet101": tvs.DeepLabV3_ResNet101_Weights,
        "deeplabv3_mobilenet_v3_large": tvs.DeepLabV3_MobileNet_V3_Large_Weights,
        "lraspp_mobilenet_v3_large": tvs.LRASPP_MobileNet_V3_Large_Weights,
    }
    for name, weights in published.items():
        info = segzoo.model_info(name)
        key = "num_params_with_aux" if TV_MODELS[name] else "num_params"
        assert info[key] == weights.DEFAULT.meta["num_params"], name


def test_timm_resnet_backbone_loads_torchvision_weights_and_matches():
    tv = torchvision_model("deeplabv3_resnet50", aux=True)
    ours = segzoo.create("deeplabv3_resnet50", backbone="timm:resnet50", aux=True).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, want = ours(x), tv(x)
    for key in ("out", "aux"):
        assert_close_rel(got[key], want[key])
