"""timm backbones: allowed keywords only, any input size, output stride 8/16 by dilation."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch.nn import functional as F

import segzoo
from segzoo.backbones.dilation import NotDilatableError, dilate
from segzoo.backbones.timm import timm_backbone
from segzoo.data import SyntheticSegmentation
from segzoo.errors import ConfigError, UsageError

# -- security: only keywords that shape the architecture reach timm.create_model ---------------


@pytest.mark.parametrize(
    "kwarg, value",
    [
        ("checkpoint_path", "/etc/passwd"),
        ("pretrained_cfg", {"url": "https://example.com/evil.pth"}),
        ("pretrained_cfg_overlay", {"url": "https://example.com/evil.pth"}),
        ("cache_dir", "/tmp/somewhere"),
    ],
)
def test_loading_keywords_are_refused(kwarg, value, monkeypatch):
    called = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: called.append(k))
    with pytest.raises(UsageError, match=f"'{kwarg}'.*load weights or configs"):
        segzoo.create("fcn", backbone="timm:resnet18", num_classes=2, backbone_kwargs={kwarg: value})
    assert not called


@pytest.mark.parametrize("kwarg", ["features_only", "in_chans", "num_classes", "feature_cls"])
def test_keywords_segzoo_sets_are_refused(kwarg):
    with pytest.raises(UsageError, match=f"'{kwarg}' is set by segzoo"):
        timm_backbone("resnet18", **{kwarg: 1})


def test_unknown_keywords_and_wrong_types_are_refused():
    with pytest.raises(UsageError, match="unknown backbone argument.*'act_layer'.*drop_path_rate"):
        timm_backbone("resnet18", act_layer="relu")
    with pytest.raises(UsageError, match="drop_path_rate='a lot' has the wrong type"):
        timm_backbone("resnet18", drop_path_rate="a lot")
    with pytest.raises(UsageError, match="img_size must be an int or two ints"):
        timm_backbone("vit_tiny_patch16_224", img_size=[1, 2, 3])


def test_pretrained_comes_only_from_create(tmp_path):
    with pytest.raises(UsageError, match="pretrained_backbone=True"):
        segzoo.create("fcn", backbone="timm:resnet18", num_classes=2, backbone_kwargs={"pretrained": True})
    # a downloaded folder whose config.json asks for a loader argument is refused
    model = segzoo.create("fcn", backbone="timm:resnet18", num_classes=2, drop_path_rate=0.1)
    folder = model.save_pretrained(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["backbone_kwargs"] == {"drop_path_rate": 0.1}
    for bad in ({"pretrained": True}, {"checkpoint_path": str(tmp_path / "x.pth")}):
        cfg["backbone_kwargs"] = bad
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match=next(iter(bad))):  # refused by the config schema
            segzoo.create(f"local-dir:{folder}")


# -- any input size ----------------------------------------------------------------------------


@pytest.mark.slow
def test_vit_takes_any_size_through_dynamic_img_size():
    bb = timm_backbone("vit_pe_spatial_tiny_patch16_512")  # asserted its 512 input before
    assert bb.input_size is None and bb.input_multiple == 1
    model = segzoo.create("fcn", backbone=bb, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 100, 76))["out"].shape == (1, 3, 100, 76)


def test_a_fixed_size_model_says_so_at_build_time_and_refuses_other_sizes():
    with torch.device("meta"):
        model = segzoo.create("fcn", backbone="timm:hiera_small_abswin_256", num_classes=2)
    bb = model.backbone
    assert bb.input_size == (256, 256) and bb.input_rule() == {"fixed": [256, 256]}
    with pytest.raises(UsageError, match="takes only 256x256 inputs.*got 128x128.*resize"):
        model(torch.empty(1, 3, 128, 128, device="meta"))
    assert model(torch.empty(1, 3, 256, 256, device="meta"))["out"].shape == (1, 2, 256, 256)


def test_channels_last_features_come_back_channels_first():
    with torch.device("meta"):
        bb = timm_backbone("swin_tiny_patch4_window7_224")
        feats = bb(torch.empty(1, 3, 128, 160))
    assert bb.nhwc and [tuple(f.shape) for f in feats.values()] == [
        (1, c, 128 // r, 160 // r)
        for c, r in zip(bb.feature_info.channels(), bb.feature_info.reductions(), strict=True)
    ]
    assert bb.feature_info.channels() == [96, 192, 384, 768]


# -- output stride -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name, output_stride", [("resnet18", 8), ("resnet26", 16), ("efficientnet_b0", 8)])
def test_generic_dilation_equals_timms_own(name, output_stride):
    torch.manual_seed(0)
    native = timm.create_model(name, features_only=True, output_stride=output_stride).eval()
    ours = timm.create_model(name, features_only=True).eval()
    ours.load_state_dict(native.state_dict())
    changed = dilate(ours, output_stride)
    assert changed
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(native(x), ours(x), strict=True):
            torch.testing.assert_close(b, a)


@pytest.mark.parametrize("name", ["ghostnet_050", "vovnet39a", "poolformer_s12"])
def test_families_timm_cannot_dilate_get_segzoos_dilation(name):
    with torch.device("meta"):
        plain = timm_backbone(name)
        for os_ in (16, 8):
            bb = timm_backbone(name, output_stride=os_)
            assert bb.dilation == "segzoo" and bb.output_stride == os_
            want = [min(r, os_) for r in plain.feature_info.reductions()]
            assert bb.feature_info.reductions() == want
            assert bb.feature_info.channels() == plain.feature_info.channels()
            feats = bb(torch.empty(2, 3, 96, 128))
            assert [tuple(f.shape[-2:]) for f in feats.values()] == [(96 // r, 128 // r) for r in want]


def test_timms_own_dilation_is_used_where_it_exists():
    with torch.device("meta"):
        bb = timm_backbone("resnet18", output_stride=16)
    assert bb.dilation == "timm" and bb.feature_info.reductions() == [2, 4, 8, 16, 16]


def test_a_patch_embedding_cannot_be_dilated():
    with pytest.raises(
        NotDilatableError, match="cannot be dilated to output_stride=8.*patch embedding.*'fcn'"
    ):
        segzoo.create("deeplabv3", backbone="timm:vit_tiny_patch16_224", num_classes=2, output_stride=8)
    with pytest.raises(UsageError, match="output_stride must be 8, 16 or 32"):
        timm_backbone("resnet18", output_stride=4)


@pytest.mark.slow
def test_deeplabv3_learns_on_a_generically_dilated_backbone():
    torch.manual_seed(0)
    model = segzoo.create(
        "deeplabv3", backbone="timm:ghostnet_050", num_classes=3, output_stride=8, channels=32
    )
    assert model.backbone.dilation == "segzoo" and model.backbone.output_stride == 8
    data = SyntheticSegmentation(8, seed=0, num_classes=3, size=(64, 64))
    images = torch.stack([data[i][0] for i in range(len(data))]).float() / 255
    masks = torch.stack([data[i][1] for i in range(len(data))])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(20):
        idx = torch.arange(4) + 4 * (step % 2)
        loss = F.cross_entropy(model(images[idx])["out"], masks[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:2]) / 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs, rule",
    [
        ({"dynamic_img_size": False}, {"fixed": [224, 224]}),
        ({"dynamic_img_size": True, "dynamic_img_pad": False}, {"multiple": 16}),
    ],
)
def test_predict_resizes_or_pads_to_what_the_backbone_takes(kwargs, rule):
    model = segzoo.create("fcn", backbone="timm:vit_tiny_patch16_224", num_classes=3, backbone_kwargs=kwargs)
    assert model.backbone.input_rule() == rule
    with pytest.raises(UsageError, match="got 50x70"):
        model.eval()(torch.rand(1, 3, 50, 70))
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    masks = segzoo.predict(model, [image, image[:, :40]], size=0, batch_size=2)
    assert [tuple(m.shape) for m in masks] == [(50, 70), (40, 70)]


def test_a_size_that_runs_with_the_wrong_channels_is_not_taken():
    # timm's hybrid ViT with dynamic padding reshapes its tokens to the wrong grid at 100x132 and
    # returns 640 channels instead of 384; only multiples of its stride give the right features
    with torch.device("meta"):
        bb = timm_backbone("vit_small_r26_s32_224")
    assert bb.input_rule() == {"multiple": 32} and bb.feature_info.channels() == [384, 384, 384]
    with pytest.raises(UsageError, match="multiples of 32, got 100x132: pad or resize to 128x160"):
        bb(torch.empty(1, 3, 100, 132, device="meta"))
    assert [f.shape[1] for f in bb(torch.empty(1, 3, 96, 128, device="meta")).values()] == [384] * 3


def test_unpadded_convolutions_keep_timms_strides():
    # inception's valid convolutions leave 1x1 of a 100x132 input at /32: not a reduction of 100
    with torch.device("meta"):
        bb = timm_backbone("inception_v3")
    assert bb.feature_info.reductions() == [2, 4, 8, 16, 32]


class _ReadsValues(torch.nn.Module):
    """A backbone whose forward reads a value (as gemma4's ViT does with Tensor.item())."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x):
        n = int(x.new_tensor(x.shape[-1]).item())  # fails on the meta device
        return self.conv(x)[..., : n // 2]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_forward_that_reads_values_is_measured_with_data(device, monkeypatch):
    """The meta device has no values: such a model's shapes come from a run with its weights (or
    zero weights when it lives on the meta device) instead of failing to build."""
    from segzoo.backbones import dilation

    monkeypatch.setattr(dilation, "REAL_PROBE_NUMEL", 0)  # as for a model too big to probe for real
    with torch.device(device):
        net = _ReadsValues()
    assert dilation.shape_forward(net, (10, 14)).shape == (1, 4, 5, 7)
    monkeypatch.setattr(dilation, "ZEROS_PROBE_NUMEL", 0)
    if device == "meta":  # too big to run with zeros: the meta error stands
        with pytest.raises(RuntimeError, match="meta"):
            dilation.shape_forward(net, (10, 14))
