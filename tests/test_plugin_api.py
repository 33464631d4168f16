"""The public plugin helpers, warnings at the user's line, and what a missing plugin says."""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from importlib import metadata

import pytest

import segzoo
from segzoo import _plugins
from segzoo._registry import UnknownNameError
from segzoo.cli import main
from segzoo.errors import PluginWarning, UsageError
from segzoo.heads.fcn import build_fcn

from .test_plugins import BROKEN_EP, GOOD_EP, ExtraPlugin, Raising

_real_entry_points = metadata.entry_points


def _entry_points(*eps: metadata.EntryPoint):
    """entry_points() with only ``eps`` in segzoo's group; other groups (torch looks up triton's)
    as installed."""

    def fake(**kwargs):
        if kwargs.get("group") == _plugins.ENTRY_POINT_GROUP:
            return list(eps)
        return _real_entry_points(**kwargs)

    return fake


def test_plugin_warning_is_public_and_one_class():
    assert segzoo.PluginWarning is PluginWarning is _plugins.PluginWarning
    assert issubclass(PluginWarning, Warning)


def test_register_plugin_as_a_context_manager_removes_it_even_when_the_block_raises():
    with pytest.raises(KeyError), segzoo.register_plugin(ExtraPlugin(), "ctx") as record:
        assert not record.failed and record.registered["model"] == ["toy_model"]
        assert "toy_model" in segzoo.list_models()
        assert [r.name for r in segzoo.list_plugins()].count("ctx") == 1
        raise KeyError("the block fails")
    assert "toy_model" not in segzoo.list_models()
    assert "ctx" not in [r.name for r in segzoo.list_plugins()]


def test_register_and_unregister_by_hand():
    record = segzoo.register_plugin(ExtraPlugin(), "byhand")
    try:
        assert "toy_head" in segzoo.list_heads()
        with pytest.raises(UsageError, match="a plugin named 'byhand' is already loaded"):
            segzoo.register_plugin(ExtraPlugin(), "byhand")
    finally:
        segzoo.unregister_plugin("byhand")
    assert "toy_head" not in segzoo.list_heads()
    with pytest.raises(UsageError, match="the plugin 'byhand' is not loaded"):
        segzoo.unregister_plugin("byhand")
    with record:  # leaving the block of a plugin already removed does nothing
        pass


def test_the_default_plugin_name_is_the_class_or_module_name():
    with segzoo.register_plugin(ExtraPlugin()) as record:
        assert record.name == "ExtraPlugin" and "toy_model" in segzoo.list_models()
    with pytest.raises(UsageError, match="non-empty string"):
        segzoo.register_plugin(ExtraPlugin(), "")


def test_only_run_time_plugins_can_be_unregistered():
    with pytest.raises(UsageError, match="'segzoo.zoo' is not one registered with register_plugin"):
        segzoo.unregister_plugin("segzoo.zoo")
    assert "fcn_resnet50" in segzoo.list_models()


class Mine:
    @segzoo.hookimpl
    def register_heads(self, register):
        register("shared_head", build_fcn)


class Theirs(Mine):
    pass


def test_the_first_plugin_keeps_a_name_and_the_other_loads_once_it_is_gone():
    with segzoo.register_plugin(Mine(), "mine"):
        with pytest.warns(PluginWarning, match="head 'shared_head' is registered twice: by plugin 'mine'"):
            theirs = segzoo.register_plugin(Theirs(), "theirs")
        with theirs:
            assert theirs.failed and theirs.registered == {}
            segzoo.unregister_plugin("mine")
            assert "shared_head" in segzoo.list_heads()
            assert not theirs.failed and theirs.registered == {"head": ["shared_head"]}


# -- warnings point at the user's line ----------------------------------------------------------


def _plugin_warnings(record: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, PluginWarning)]


def test_a_broken_plugin_warns_at_the_line_that_triggered_loading(fresh_plugins, monkeypatch):
    monkeypatch.setattr(_plugins.metadata, "entry_points", _entry_points(BROKEN_EP))
    monkeypatch.delenv(_plugins.ENV_VAR, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        segzoo.list_models()
    (w,) = _plugin_warnings(caught)
    assert "brokenplugin" in str(w.message)
    assert (w.filename, w.lineno) == (__file__, line)


@pytest.mark.parametrize(
    "trigger",
    [
        lambda: segzoo.create("fcn", backbone="resnet18", num_classes=2),
        lambda: segzoo.model_info("fcn_resnet50"),
        lambda: main(["list", "--heads"]),
        lambda: segzoo.list_plugins(),
    ],
    ids=["create", "model_info", "cli", "list_plugins"],
)
def test_loading_warnings_point_at_the_users_file_whatever_triggers_them(
    fresh_plugins, monkeypatch, capsys, trigger
):
    monkeypatch.setattr(_plugins.metadata, "entry_points", _entry_points(BROKEN_EP, GOOD_EP))
    monkeypatch.setenv(_plugins.ENV_VAR, "brokenplugin,nosuchplugin")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trigger()
    found = _plugin_warnings(caught)
    assert {"brokenplugin", "nosuchplugin"} <= {n for w in found for n in str(w.message).split("'")}
    assert all(w.filename == __file__ for w in found), [(w.filename, w.lineno) for w in found]


def test_a_failing_run_time_plugin_warns_at_the_register_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        record = segzoo.register_plugin(Raising(), "raising_here")
    with record:
        (w,) = _plugin_warnings(caught)
        assert (w.filename, w.lineno) == (__file__, line)


# -- SEGZOO_PLUGINS naming a plugin that is not installed; --strict and --json -------------------


def test_a_missing_plugin_named_in_segzoo_plugins_is_a_failure_for_strict(fresh_plugins, monkeypatch, capsys):
    monkeypatch.setattr(_plugins.metadata, "entry_points", _entry_points(GOOD_EP))
    monkeypatch.setenv(_plugins.ENV_VAR, "goodplugin,nosuchplugin,segzoo")
    with pytest.warns(PluginWarning, match="SEGZOO_PLUGINS names 'nosuchplugin'") as warned:
        rc = main(["plugins", "--strict"])
    assert len(warned) == 1  # "segzoo" (the built-ins, always loaded) is no unknown name
    out = capsys.readouterr().out
    assert rc == 1 and "FAILED: SEGZOO_PLUGINS names 'nosuchplugin'" in out
    assert "good_model" in segzoo.list_models()
    assert main(["plugins"]) == 0  # without --strict a failure is shown, not an error
    capsys.readouterr()
    assert main(["plugins", "--json", "--strict"]) == 1
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["nosuchplugin"]["failed"] and not records["goodplugin"]["failed"]
    assert main(["plugins", "--json"]) == 0


# -- why a part is missing --------------------------------------------------------------------------


@pytest.fixture
def installed(tmp_path, monkeypatch, fresh_plugins):
    """Install a fake distribution with one ``segzoo`` entry point (a real .dist-info on sys.path)."""

    def install(dist: str, version: str, ep_name: str, module: str, code: str) -> None:
        (tmp_path / f"{module}.py").write_text(code)
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[segzoo]\n{ep_name} = {module}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, module, raising=False)

    return install


FAKE_PLUGIN = """
import segzoo

@segzoo.hookimpl
def register_heads(register):
    from segzoo.heads.fcn import build_fcn
    register("fake_head", build_fcn)
"""


def test_a_part_of_an_installed_plugin_that_segzoo_plugins_excludes_says_so(installed, monkeypatch):
    installed("segzoo-fakeplug", "1.2.0", "fakeplug", "segzoo_fakeplug_mod", FAKE_PLUGIN)
    monkeypatch.setenv(_plugins.ENV_VAR, "")
    assert "fake_head" not in segzoo.list_heads()
    assert "segzoo_fakeplug_mod" not in sys.modules  # excluded plugins are not imported
    (rec,) = [r for r in _plugins.excluded_plugins() if r.name == "fakeplug"]
    assert (rec.distribution, rec.version) == ("segzoo-fakeplug", "1.2.0")
    expected = (
        "which is provided by the installed plugin 'fakeplug' (segzoo-fakeplug 1.2.0), which "
        "SEGZOO_PLUGINS excludes: add it to SEGZOO_PLUGINS or unset it"
    )
    assert _plugins.why_missing("segzoo-fakeplug", "1.2.0") == expected
    assert _plugins.why_missing("Segzoo_FakePlug", None) == expected  # names compare normalized
    # an unknown name says which installed plugins were not loaded
    with pytest.raises(
        UnknownNameError, match=r"SEGZOO_PLUGINS excludes the installed plugin\(s\) .*'fakeplug'"
    ):
        segzoo.create("fcn", backbone="fake_backbone", num_classes=2)


def test_a_part_an_installed_plugin_does_not_register_asks_for_an_upgrade(installed, monkeypatch):
    installed("segzoo-fakeplug", "1.2.0", "fakeplug", "segzoo_fakeplug_mod", FAKE_PLUGIN)
    monkeypatch.delenv(_plugins.ENV_VAR, raising=False)
    assert "fake_head" in segzoo.list_heads()
    assert _plugins.why_missing("segzoo-fakeplug", "1.3") == (
        "which the installed segzoo-fakeplug 1.2.0 does not provide: pip install --upgrade 'segzoo-fakeplug>=1.3'"
    )


def test_a_part_of_a_plugin_that_failed_names_the_failure(installed, monkeypatch):
    installed("segzoo-badplug", "0.3", "badplug", "segzoo_badplug_mod", "raise ImportError('needs foo')\n")
    monkeypatch.delenv(_plugins.ENV_VAR, raising=False)
    with pytest.warns(PluginWarning, match="needs foo"):
        msg = _plugins.why_missing("segzoo-badplug", "0.3")
    assert msg.startswith("which the installed plugin 'badplug' (segzoo-badplug 0.3) provides, but it failed")
    assert "ImportError: needs foo" in msg


@pytest.mark.parametrize(
    "dist,version,expected",
    [
        ("segzoo-nosuch", "0.1", "which is not installed: pip install 'segzoo-nosuch>=0.1'"),
        ("segzoo-nosuch", "0.1; rm -rf ~", "which is not installed: pip install 'segzoo-nosuch'"),
        ("segzoo-nosuch", None, "which is not installed: pip install 'segzoo-nosuch'"),
        (
            "segzoo",
            "9.0",
            f"which segzoo {segzoo.__version__} does not provide: pip install --upgrade 'segzoo>=9.0'",
        ),
        (
            "x' ; touch p ; echo '",
            "1.0",
            "which no loaded plugin provides: install the plugin that provides it",
        ),
        ("segzoo-x\n", "1.0", "which no loaded plugin provides"),
        (None, None, "which no loaded plugin provides"),
        (["segzoo-x"], {"v": 1}, "which no loaded plugin provides"),
    ],
)
def test_why_missing_suggests_pip_only_for_well_formed_names_and_versions(dist, version, expected):
    msg = _plugins.why_missing(dist, version)
    assert msg.startswith(expected)
    if "pip install" not in expected:
        assert "pip" not in msg and "touch" not in msg
