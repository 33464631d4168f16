"""Plugin machinery: throwaway plugins registered at run time, entry points, failures."""

from __future__ import annotations

import json
import warnings
from importlib import metadata

import pytest
import torch

import segzoo
from segzoo import _plugins
from segzoo.errors import UnknownNameError
from segzoo.heads.fcn import build_fcn

from .conftest import plugin, requires, run_python


class ExtraPlugin:
    """Adds one backbone, one head and one recipe."""

    @segzoo.hookimpl
    def register_backbones(self, register):
        register("toy_backbone", lambda: toy_backbone(), description="a toy")

    @segzoo.hookimpl
    def register_heads(self, register):
        register("toy_head", build_fcn)

    @segzoo.hookimpl
    def register_models(self, register):
        register("toy_model", backbone="toy_backbone", head="toy_head", num_classes=4)


def toy_backbone() -> segzoo.FeatureExtractor:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
    return segzoo.FeatureExtractor(net, {"1": "out"})


def test_a_runtime_plugin_adds_and_removes_its_entries():
    with plugin(ExtraPlugin(), "extra") as record:
        assert "toy_model" in segzoo.list_models()
        assert "toy_backbone" in segzoo.list_backbones("toy*")
        assert record.registered == {
            "backbone": ["toy_backbone"],
            "head": ["toy_head"],
            "model": ["toy_model"],
        }
        out = segzoo.create("toy_model")(torch.randn(2, 3, 16, 16))["out"]
        assert out.shape == (2, 4, 16, 16)
        assert segzoo.model_info("toy_model")["provider"]["plugin"] == "extra"
    assert "toy_model" not in segzoo.list_models()
    with pytest.raises(UnknownNameError, match="unknown model 'toy_model'"):
        segzoo.create("toy_model")


class Duplicate:
    @segzoo.hookimpl
    def register_heads(self, register):
        register("brand_new_head", build_fcn)
        register("fcn", build_fcn)  # taken by the built-in segzoo.heads.fcn


def test_a_duplicate_name_is_an_error_naming_both_plugins_and_nothing_of_it_is_kept():
    with pytest.warns(_plugins.PluginWarning) as warned, plugin(Duplicate(), "dupe") as record:
        assert record.failed
        assert "'segzoo.heads.fcn'" in record.error and "'dupe'" in record.error
        assert "brand_new_head" not in segzoo.list_heads()  # skipped as a whole
        assert segzoo.create("fcn", backbone="resnet18", num_classes=2)  # the built-in still works
    assert "registered twice" in str(warned[0].message)


class Raising:
    @segzoo.hookimpl
    def register_backbones(self, register):
        register("half_registered", lambda: toy_backbone())

    @segzoo.hookimpl
    def register_models(self, register):
        raise RuntimeError("boom")


def test_a_raising_hook_skips_the_plugin_with_a_warning():
    with (
        pytest.warns(_plugins.PluginWarning, match=r"register_models\(\) raised RuntimeError: boom"),
        plugin(Raising(), "raising") as record,
    ):
        assert record.failed
        assert "half_registered" not in segzoo.list_backbones()
        assert "fcn_resnet50" in segzoo.list_models()
        status = {r.name: r for r in _plugins.plugins()}
        assert status["raising"].failed and not status["segzoo.zoo"].failed


class Typo:
    @segzoo.hookimpl
    def register_model(self, register):  # missing "s"
        register("never", backbone="resnet18", head="fcn")


def test_a_misspelt_hook_is_reported():
    with (
        pytest.warns(_plugins.PluginWarning, match="did you mean 'register_models'"),
        plugin(Typo(), "typo") as record,
    ):
        assert record.failed


class BadRecipe:
    @segzoo.hookimpl
    def register_models(self, register):
        register("bad", backbone="resnet18", head="fcn", num_clases=3)


def test_a_bad_recipe_field_is_reported():
    with (
        pytest.warns(_plugins.PluginWarning, match=r"unknown field\(s\) \['num_clases'\]"),
        plugin(BadRecipe(), "badrecipe") as record,
    ):
        assert record.failed


def _entry_points(*eps: metadata.EntryPoint):
    def fake(group=None, **_):
        assert group == _plugins.ENTRY_POINT_GROUP
        return list(eps)

    return fake


GOOD_EP = metadata.EntryPoint("goodplugin", "tests.plugin_good", "segzoo")
BROKEN_EP = metadata.EntryPoint("brokenplugin", "segzoo_no_such_module_for_tests", "segzoo")


def test_a_plugin_that_fails_to_import_is_skipped(fresh_plugins, monkeypatch):
    monkeypatch.setattr(_plugins.metadata, "entry_points", _entry_points(BROKEN_EP, GOOD_EP))
    monkeypatch.delenv(_plugins.ENV_VAR, raising=False)
    with pytest.warns(_plugins.PluginWarning, match="brokenplugin.*ModuleNotFoundError"):
        models = segzoo.list_models()
    assert "good_model" in models and "fcn_resnet50" in models
    status = {r.name: r for r in _plugins.plugins()}
    assert status["brokenplugin"].failed and not status["goodplugin"].failed


@pytest.mark.parametrize(
    "choice,loaded",
    [
        (None, {"goodplugin", "otherplugin"}),
        ("", set()),
        ("goodplugin", {"goodplugin"}),
        (" otherplugin ,", {"otherplugin"}),
    ],
)
def test_segzoo_plugins_env_chooses_entry_points(fresh_plugins, monkeypatch, choice, loaded):
    other = metadata.EntryPoint("otherplugin", "tests.plugin_other", "segzoo")
    monkeypatch.setattr(_plugins.metadata, "entry_points", _entry_points(GOOD_EP, other))
    if choice is None:
        monkeypatch.delenv(_plugins.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(_plugins.ENV_VAR, choice)
    names = {r.name for r in _plugins.plugins() if not r.builtin}
    assert names == loaded
    assert ("good_model" in segzoo.list_models()) == ("goodplugin" in loaded)
    assert "fcn_resnet50" in segzoo.list_models()  # built-ins always load


def test_segzoo_plugins_env_warns_about_unknown_names(fresh_plugins, monkeypatch):
    monkeypatch.setattr(_plugins.metadata, "entry_points", _entry_points(GOOD_EP))
    monkeypatch.setenv(_plugins.ENV_VAR, "goodplugin,nosuchplugin")
    with pytest.warns(_plugins.PluginWarning, match="'nosuchplugin'"):
        _plugins.plugins()


@requires("segzoo-deeplabv3plus")
def test_deeplabv3plus_package_is_found_through_its_entry_point():
    """The real plugin under plugins/, installed by `make test`, is loaded from its entry point
    on first registry access, never imported by hand."""
    (ep,) = [e for e in metadata.entry_points(group="segzoo") if e.name == "deeplabv3plus"]
    assert ep.dist is not None and ep.dist.name == "segzoo-deeplabv3plus"
    code = (
        "import sys, json, segzoo\n"
        "before = 'segzoo_deeplabv3plus' in sys.modules\n"
        "heads = segzoo.list_heads()\n"
        "from segzoo import _plugins\n"
        "rec = [r for r in _plugins.plugins() if r.name == 'deeplabv3plus'][0]\n"
        "m = segzoo.create('deeplabv3plus_resnet50', num_classes=3)\n"
        "print(json.dumps({'before': before, 'after': 'segzoo_deeplabv3plus' in sys.modules, 'heads': heads,\n"
        "  'dist': rec.distribution, 'builtin': rec.builtin, 'providers': m.config['providers']}))\n"
    )
    proc = run_python(code, env={"SEGZOO_PLUGINS": "deeplabv3plus"})
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["before"] is False and res["after"] is True
    assert "deeplabv3plus" in res["heads"]
    assert res["dist"] == "segzoo-deeplabv3plus" and res["builtin"] is False
    assert res["providers"]["head"]["distribution"] == "segzoo-deeplabv3plus"
    assert res["providers"]["backbone"]["distribution"] == "segzoo"


def test_no_warnings_when_every_plugin_is_fine():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(not r.failed for r in _plugins.plugins())


def test_the_plugin_guide_example_works_and_is_short():
    """docs/plugins.md's example is real code: under 50 lines, and it registers and builds."""
    import pathlib
    import re
    import types

    text = (pathlib.Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) < 50
    code = code.replace('"deeplabv3plus"', '"docs_head"').replace('"deeplabv3plus_resnet50"', '"docs_model"')
    module = types.ModuleType("docs_plugin")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    with plugin(module, "docs_plugin") as record:
        assert not record.failed, record.error
        m = segzoo.create("docs_head", backbone="mobilenet_v3_small", num_classes=4)
        assert m(torch.randn(2, 3, 64, 64))["out"].shape == (2, 4, 64, 64)
        assert segzoo.create("docs_model", num_classes=2).config["head"] == "docs_head"
