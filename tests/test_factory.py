"""create(): names, head x backbone combinations, keyword routing and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segzoo
from segzoo.errors import UnknownNameError, UsageError


def test_list_functions_filter_with_fnmatch():
    assert segzoo.list_models("deeplab*") == [m for m in segzoo.list_models() if m.startswith("deeplab")]
    assert "deeplabv3_resnet101" in segzoo.list_models("deeplab*")
    assert "fcn_resnet50" not in segzoo.list_models("deeplab*")
    assert segzoo.list_models(["fcn_*", "lraspp*"]) == [
        "fcn_resnet50",
        "fcn_resnet101",
        "lraspp_mobilenet_v3_large",
    ]
    assert "fcn_resnet101" not in segzoo.list_models("fcn*", exclude_filters="*101")
    assert segzoo.list_backbones("resnet1*") == ["resnet18", "resnet101", "resnet152"]
    assert {"fcn", "deeplabv3", "lraspp"} <= set(segzoo.list_heads())


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UnknownNameError, match="unknown model 'deeplab_resnet50'.*deeplabv3_resnet50"):
        segzoo.create("deeplab_resnet50")
    with pytest.raises(UnknownNameError, match="unknown backbone 'resnet05'.*resnet50"):
        segzoo.create("fcn", backbone="resnet05", num_classes=2)
    with pytest.raises(UnknownNameError, match="unknown head 'fnc'.*fcn"):
        segzoo.create(head="fnc", backbone="resnet18", num_classes=2)
    with pytest.raises(UnknownNameError, match="unknown timm model 'timm:resnet5'.*timm:resnet50"):
        segzoo.create("fcn", backbone="timm:resnet5", num_classes=2)


def test_head_and_backbone_combination_and_kwarg_routing():
    m = segzoo.create(
        "deeplabv3", backbone="resnet50", num_classes=5, output_stride=16, atrous_rates=(3, 6, 9)
    )
    assert m.config["backbone_kwargs"] == {"output_stride": 16}
    assert m.config["head_kwargs"] == {"atrous_rates": (3, 6, 9)}
    assert m.backbone.feature_info["layer4"].reduction == 16
    assert m.classifier[0].convs[1][0].dilation == (3, 3)
    assert m(torch.randn(2, 3, 64, 64))["out"].shape == (2, 5, 64, 64)


def test_aspp_rates_follow_the_output_stride():
    for os_, rates in ((8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))):
        m = segzoo.create("deeplabv3", backbone="resnet50", num_classes=2, output_stride=os_)
        got = tuple(m.classifier[0].convs[i][0].dilation[0] for i in (1, 2, 3))
        assert got == rates


def test_recipe_overrides():
    m = segzoo.create("deeplabv3_resnet50", num_classes=3, aux=True)
    assert m.num_classes == 3 and m.labels is None and m.aux_classifier is not None
    assert segzoo.create("deeplabv3_resnet50").labels[15] == "person"
    # the recipe's output stride carries over to a backbone that takes it
    m = segzoo.create("deeplabv3_resnet50", backbone="timm:resnet50")
    assert m.config["backbone_kwargs"] == {"output_stride": 8}
    assert m.backbone.feature_info.resolve("out").reduction == 8
    m = segzoo.create("fcn_resnet50", head="deeplabv3")
    assert m.config["head"] == "deeplabv3" and m.config["recipe"] == "fcn_resnet50"


def test_keyword_errors_are_clear():
    with pytest.raises(
        UsageError, match=r"unexpected keyword argument 'atrous_rate'.*takes \['atrous_rates'"
    ):
        segzoo.create("deeplabv3_resnet50", atrous_rate=(1, 2, 3))
    with pytest.raises(UsageError, match="needs num_classes"):
        segzoo.create("fcn", backbone="resnet18")
    with pytest.raises(UsageError, match="say which backbone"):
        segzoo.create("fcn", num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        segzoo.create("fcn_resnet50", num_classes=0)
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        segzoo.create("fcn_resnet50", output_stride=4)
    with pytest.raises(ValueError, match="BasicBlocks.*dilation='uniform', output_stride=32"):
        segzoo.create("fcn", backbone="resnet18", num_classes=2, output_stride=8, dilation="torchvision")
    with pytest.raises(ValueError, match="cannot be dilated to output_stride=8"):
        segzoo.create("fcn", backbone="timm:vit_tiny_patch16_224", num_classes=2, output_stride=8)


def test_a_users_own_module_as_backbone():
    class MyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU()
            )
            self.b = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU())

        def forward(self, x):
            return self.b(self.a(x))

    backbone = segzoo.FeatureExtractor(MyNet(), {"a": "aux", "b": "out"})
    m = segzoo.create(head="fcn", backbone=backbone, num_classes=3, aux=True)
    assert m.classifier.in_features == ("out",) and m.aux_classifier.in_features == ("aux",)
    out = m(torch.randn(2, 3, 40, 40))
    assert out["out"].shape == out["aux"].shape == (2, 3, 40, 40)
    assert m.config["backbone"] is None  # recorded as not rebuildable from a name
    assert {k.split(".")[1] for k in m.state_dict() if k.startswith("backbone.")} == {"a", "b"}

    with pytest.raises(UsageError, match="FeatureExtractor"):
        segzoo.create(head="fcn", backbone=MyNet(), num_classes=3)


def test_training_at_batch_size_one_through_aspp_pooling_is_a_clear_error():
    m = segzoo.create("deeplabv3", backbone="resnet18", num_classes=2).train()
    with pytest.raises(ValueError, match="batch of 1"):
        m(torch.randn(1, 3, 64, 64))
    m.eval()
    assert m(torch.randn(1, 3, 64, 64))["out"].shape == (1, 2, 64, 64)
    # frozen BatchNorm (eval) inside a training model is fine at batch size 1
    m.train()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eval()
    m(torch.randn(1, 3, 64, 64))


def test_model_info_builds_on_the_meta_device_and_reports_features():
    info = segzoo.model_info("lraspp_mobilenet_v3_large")
    assert info["provider"] == {
        "plugin": "segzoo.zoo",
        "distribution": "segzoo",
        "version": segzoo.__version__,
    }
    assert info["head_features"] == ["4", "16"]
    feats = {f["name"]: f for f in info["features"]}
    assert feats["4"]["channels"] == 40 and feats["4"]["reduction"] == 8 and "low" in feats["4"]["roles"]
    assert feats["16"]["channels"] == 960 and feats["16"]["reduction"] == 16
    with pytest.raises(UnknownNameError, match="unknown model"):
        segzoo.model_info("nope")


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("deeplabv3_resnet50", (None, "deeplabv3_resnet50", None)),
        ("deeplabv3_resnet50.tv_coco_voc", (None, "deeplabv3_resnet50", "tv_coco_voc")),
        ("local-dir:./a b/c", ("local-dir", "", None)),
        ("hf-hub:org/repo", ("hf-hub", "", None)),
        ("hf-hub:org/repo@v1.0", ("hf-hub", "", None)),
    ],
)
def test_one_parser_for_model_names(text, parts):
    from segzoo._names import parse_model_name

    p = parse_model_name(text)
    assert (p.scheme, p.name, p.tag) == parts
    if p.scheme == "local-dir":
        assert p.path == "./a b/c"
    if p.scheme == "hf-hub":
        assert p.repo_id == "org/repo" and p.revision == ("v1.0" if "@" in text else None)


@pytest.mark.parametrize(
    "text",
    ["", "a.b.c", "../x", "hf-hub:org", "hf-hub:org/repo/extra", "hf-hub:../../etc/passwd", "hf-hub:org/re po",
     "hf-hub:org/repo@", "local-dir:", "fcn resnet"],
)  # fmt: skip
def test_malformed_model_names_are_one_usage_error(text):
    with pytest.raises(UsageError):
        segzoo.create(text)
