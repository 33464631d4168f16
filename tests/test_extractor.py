"""The generic FeatureExtractor: FX, hooks and outputs modes, names, feature_info, copies."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import segzoo
from segzoo import Feature, FeatureExtractor, FeatureInfo
from segzoo.errors import UsageError


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.stage2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.scale = nn.Parameter(torch.full((1,), 2.0))  # a root parameter
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.stage1(x) * self.scale
        x = self.stage2(x)
        return self.head(x.mean((2, 3)))


class Untraceable(TinyNet):
    def forward(self, x):
        x = self.stem(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 1.0
        x = self.stage1(x) * self.scale
        x = self.stage2(x)
        return self.head(x.mean((2, 3)))


def reference(net, x):
    mid = net.stage1(net.stem(x))
    return {"mid": mid, "scaled": mid * net.scale, "out": net.stage2(mid * net.scale)}


@pytest.mark.parametrize("cls,method", [(TinyNet, "fx"), (Untraceable, "hooks")])
def test_features_equal_direct_computation(cls, method):
    torch.manual_seed(0)
    net = cls().eval()
    fe = FeatureExtractor(net, {"stage1": "mid", "stage2": "out"}).eval()
    assert fe.method == method
    x = torch.randn(2, 3, 32, 32)
    got, want = fe(x), reference(net, x)
    assert list(got) == ["mid", "out"]
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert fe.feature_info.names() == ["mid", "out"]
    assert fe.feature_info.channels() == [16, 32]
    assert fe.feature_info.reductions() == [4, 8]


def test_fx_keeps_parameter_names_and_drops_unused_modules():
    net = TinyNet()
    fe = FeatureExtractor(net, {"stage2": "out"})
    keys = set(fe.state_dict())
    assert keys == {k for k in net.state_dict() if not k.startswith("head.")}
    fe.load_state_dict({k: v for k, v in net.state_dict().items() if k in keys}, strict=True)


def test_fx_accepts_graph_nodes_that_are_not_modules():
    net = TinyNet().eval()
    fe = FeatureExtractor(net, {"mul": "scaled"})  # the `* self.scale` node
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(fe(x)["scaled"], reference(net, x)["scaled"])


def test_hooks_keep_names_stop_early_and_share_root_parameters():
    net = Untraceable()
    fe = FeatureExtractor(net, {"stage1": "mid"})
    assert fe.method == "hooks"
    assert set(fe.state_dict()) == set(net.state_dict())

    def boom(*_):
        raise AssertionError("stage2 ran although no feature needs it")

    net.stage2.register_forward_pre_hook(boom)
    fe(torch.randn(1, 3, 16, 16))

    # load_state_dict(assign=True) replaces the root parameter; the wrapped module must see it
    net = Untraceable().eval()
    fe = FeatureExtractor(net, {"stage2": "out"})
    sd = {k: torch.zeros_like(v) if k == "scale" else v for k, v in net.state_dict().items()}
    fe.load_state_dict(sd, assign=True)
    assert net.scale is fe.scale
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(fe(x)["out"], net.stage2(net.stage1(net.stem(x)) * 0.0))


def test_train_eval_reaches_the_wrapped_root():
    net = Untraceable()
    fe = FeatureExtractor(net, {"stage1": "mid"})
    fe.eval()
    assert not net.training and not net.stem[1].training
    fe.train()
    assert net.training and net.stem[1].training


class Pyramid(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, stride=2)
        self.b = nn.Conv2d(4, 6, 1, stride=2)

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


def test_outputs_mode_names_a_list_returning_module():
    fe = FeatureExtractor(Pyramid(), {"0": "fine", "1": "out"}, method="outputs")
    out = fe(torch.randn(1, 3, 16, 16))
    assert [tuple(v.shape) for v in out.values()] == [(1, 4, 8, 8), (1, 6, 4, 4)]
    assert fe.feature_info.reductions() == [2, 4]
    assert set(fe.state_dict()) == {"a.weight", "a.bias", "b.weight", "b.bias"}


@pytest.mark.parametrize("cls", [TinyNet, Untraceable])
def test_deepcopy_and_pickle_give_independent_equal_copies(cls):
    torch.manual_seed(0)
    fe = FeatureExtractor(cls(), {"stage1": "mid", "stage2": "out"}).eval()
    x = torch.randn(1, 3, 16, 16)
    for clone in (copy.deepcopy(fe), pickle.loads(pickle.dumps(fe))):
        clone.eval()
        torch.testing.assert_close(clone(x)["out"], fe(x)["out"])
        with torch.no_grad():
            clone.stage2.weight.add_(1.0)
            clone.scale.fill_(5.0)
        assert not torch.equal(clone(x)["out"], fe(x)["out"])  # no tensor is shared with the original
        if cls is Untraceable:
            assert clone._body.scale is clone.scale  # the copy's body shares the copy's tensors


def test_unknown_node_names_get_close_matches():
    with pytest.raises(ValueError, match=r"TinyNet has no node 'stage3' \(did you mean 'stage2', 'stage1'"):
        FeatureExtractor(TinyNet(), {"stage3": "out"})
    with pytest.raises(ValueError, match=r"has no node 'stag2' \(did you mean 'stage2'"):
        FeatureExtractor(Untraceable(), {"stag2": "out"})


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(UsageError, match="wraps an nn.Module"):
        FeatureExtractor(lambda x: x, ["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="return_nodes is empty"):
        FeatureExtractor(TinyNet(), {})
    with pytest.raises(ValueError, match="same name"):
        FeatureExtractor(TinyNet(), {"stage1": "x", "stage2": "x"})
    with pytest.raises(ValueError, match="N x C x H x W"):
        FeatureExtractor(TinyNet(), {"head": "logits"})


def test_feature_info_roles_and_strides():
    info = FeatureInfo(
        [Feature("c2", 8, 4, "a"), Feature("c3", 16, 8, "b"), Feature("c4", 32, 8, "c")], roles={"aux": "c3"}
    )
    assert info.resolve("out").name == "c4"
    assert info.resolve("aux").name == "c3"
    assert info.resolve("low").name == "c3"  # the first feature at stride 8
    assert info.resolve("stride4").name == "c2"
    assert info.resolve("c4").channels == 32
    with pytest.raises(ValueError, match="no feature at reduction 16"):
        info.resolve("stride16")
    with pytest.raises(ValueError, match="unknown feature 'ot'.*'out'"):
        info.resolve("ot")
    with pytest.raises(ValueError, match="not a feature"):
        FeatureInfo([Feature("c2", 8, 4, "a")], roles={"aux": "c9"})
    single = FeatureInfo([Feature("c5", 8, 32, "a")])
    with pytest.raises(ValueError, match="aux=False"):
        single.resolve("aux")


def test_hooks_mode_traces_into_one_graph_under_torch_compile():
    import torch._dynamo

    torch._dynamo.reset()
    model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=3).eval()
    assert model.backbone.method == "hooks"
    x = torch.randn(1, 3, 64, 64)
    explained = torch._dynamo.explain(model)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(compiled(x)["out"], model(x)["out"], rtol=0, atol=0)


def test_concurrent_calls_in_hooks_mode_do_not_mix_their_features():
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    net = Untraceable().eval()
    fe = FeatureExtractor(net, {"stage1": "mid", "stage2": "out"})
    inputs = [torch.randn(1, 3, 16, 16) for _ in range(8)]
    with torch.no_grad():
        expected = [reference(net, x)["mid"] for x in inputs]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda x: fe(x)["mid"], inputs * 10))
    for i, g in enumerate(got):
        torch.testing.assert_close(g, expected[i % 8], rtol=0, atol=0)
    assert fe._captures.calls == {}


@pytest.mark.parametrize("method", ["fx", "hooks", "outputs"])
def test_a_dropped_extractor_is_freed_at_once(method):
    """No reference cycle (hooks holding the extractor, say): a dropped model, and the
    memory-mapped weights file under it, go at once, not at the next garbage collection."""
    import gc
    import weakref

    if method == "outputs":
        ext = FeatureExtractor(Pyramid(), {"0": "fine", "1": "out"}, method=method)
    else:
        ext = FeatureExtractor(TinyNet(), {"stage1": "mid", "stage2": "out"}, method=method)
    ext(torch.randn(1, 3, 32, 32))
    ref = weakref.ref(ext)
    gc.disable()
    try:
        del ext
        assert ref() is None
    finally:
        gc.enable()


def test_asking_for_some_features_stops_the_forward_after_them():
    calls = []
    net = Untraceable()
    net.stage2.register_forward_hook(lambda *_: calls.append("stage2"))
    fe = FeatureExtractor(net, {"stage1": "mid", "stage2": "out"}, method="hooks")
    calls.clear()  # building probed the shapes with a full forward
    x = torch.randn(1, 3, 32, 32)
    mid = fe(x, ["mid"])
    assert list(mid) == ["mid"] and calls == []  # stage2 never ran
    both = fe(x)
    assert list(both) == ["mid", "out"] and calls == ["stage2"]
    torch.testing.assert_close(mid["mid"], both["mid"])
    with pytest.raises(UsageError, match="unknown feature names"):
        fe(x, ["nope"])


def test_a_model_runs_the_backbone_only_as_deep_as_its_heads_read():
    stages = []
    model = segzoo.create(head="fcn", backbone="resnet18", num_classes=3).eval()
    for name in ("layer3", "layer4"):
        model.backbone.get_submodule(name).register_forward_hook(lambda *_, n=name: stages.append(n))
    model.classifier.in_features = (model.backbone.feature_info.resolve("stride8").name,)
    model.classifier[0] = nn.Conv2d(128, 128, 3, padding=1, bias=False)  # layer2's 128 channels
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)
    assert stages == []
