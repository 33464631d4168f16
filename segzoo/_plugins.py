"""Plugin loading: built-ins and the ``segzoo`` entry points, through one pluggy PluginManager.

Loading is lazy (the first registry access) and never fatal: a plugin that fails to import, whose
hook raises, or that registers a name already taken is skipped as a whole, with a warning, and
shown as failed by ``segzoo plugins``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from ._registry import Entry, Kind, Registry, RegistryError, make_entry

ENTRY_POINT_GROUP = "segzoo"
ENV_VAR = "SEGZOO_PLUGINS"
BUILTIN_PLUGINS = (
    "segzoo.backbones.resnet",
    "segzoo.backbones.mobilenet",
    "segzoo.backbones.timm",
    "segzoo.heads.fcn",
    "segzoo.heads.deeplabv3",
    "segzoo.heads.lraspp",
    "segzoo.zoo",
)
# hook name -> the kind of thing its register callback adds
HOOKS: dict[str, Kind] = {
    "register_backbones": "backbone",
    "register_heads": "head",
    "register_models": "model",
}


class PluginWarning(RuntimeWarning):
    """A plugin was skipped; segzoo goes on without it."""


@dataclass
class PluginRecord:
    """What one plugin is, where it comes from and what it registered."""

    name: str
    builtin: bool
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pm: pluggy.PluginManager | None = None
        self.records: dict[str, PluginRecord] = {}
        self.order: list[str] = []  # plugin names in load order: built-ins first
        self.registry: Registry | None = None


_state = _State()


def _segzoo_version() -> str:
    from . import __version__

    return __version__


def _fail(record: PluginRecord, message: str) -> None:
    record.error = message
    record.registered = {}
    warnings.warn(f"segzoo: plugin {record.name!r} skipped: {message}", PluginWarning, stacklevel=3)


def _selected_entry_points() -> list[metadata.EntryPoint]:
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    choice = os.environ.get(ENV_VAR)
    if choice is None:
        return eps
    wanted = {c.strip() for c in choice.split(",") if c.strip()}
    chosen = [ep for ep in eps if ep.name in wanted or (ep.dist is not None and ep.dist.name in wanted)]
    known = {ep.name for ep in chosen} | {ep.dist.name for ep in chosen if ep.dist is not None}
    for name in sorted(wanted - known):
        warnings.warn(
            f"segzoo: {ENV_VAR} names {name!r}, but no installed plugin has that entry-point or "
            f"distribution name (installed: {sorted(ep.name for ep in eps) or 'none'})",
            PluginWarning,
            stacklevel=4,
        )
    return chosen


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Hook implementations whose name is not a segzoo hook (usually a typo)."""
    bad = []
    for attr in dir(plugin):
        try:
            opts = pm.parse_hookimpl_opts(plugin, attr)
        except Exception:
            opts = None
        if opts is not None and attr not in HOOKS:
            close = difflib.get_close_matches(attr, list(HOOKS), n=1)
            bad.append(attr + (f" (did you mean {close[0]!r}?)" if close else ""))
    return bad


def _register(pm: pluggy.PluginManager, plugin: Any, record: PluginRecord) -> None:
    _state.records[record.name] = record
    bad = _unknown_hooks(pm, plugin)
    if bad:
        _fail(record, f"unknown hook(s) {', '.join(bad)}; segzoo's hooks are {list(HOOKS)}")
        return
    try:
        pm.register(plugin, name=record.name)
    except Exception as err:
        _fail(record, f"{type(err).__name__}: {err}")
        return
    _state.order.append(record.name)
    record.hooks = [h.name for h in pm.get_hookcallers(plugin) or []]


def plugin_manager() -> pluggy.PluginManager:
    """The PluginManager with built-ins and the selected entry points registered."""
    with _state.lock:
        if _state.pm is not None:
            return _state.pm
        pm = pluggy.PluginManager("segzoo")
        pm.add_hookspecs(hookspecs)
        _state.pm = pm
        version = _segzoo_version()
        for modname in BUILTIN_PLUGINS:
            record = PluginRecord(modname, builtin=True, distribution="segzoo", version=version)
            try:
                module = importlib.import_module(modname)
            except Exception as err:
                _state.records[modname] = record
                _fail(record, f"import failed: {type(err).__name__}: {err}")
                continue
            _register(pm, module, record)
        for ep in _selected_entry_points():
            dist = ep.dist
            record = PluginRecord(
                ep.name,
                builtin=False,
                distribution=dist.name if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
            try:
                plugin = ep.load()
            except Exception as err:
                _state.records[ep.name] = record
                _fail(record, f"import of {ep.value!r} failed: {type(err).__name__}: {err}")
                continue
            _register(pm, plugin, record)
        return pm


def _call_hooks(pm: pluggy.PluginManager) -> list[Entry]:
    """Call each plugin's implementation of every hook on its own, so that one failing plugin is
    skipped as a whole and every entry knows which plugin made it."""
    staged: dict[str, list[Entry]] = {}
    for hook_name, kind in HOOKS.items():
        impls = {impl.plugin_name: impl for impl in getattr(pm.hook, hook_name).get_hookimpls()}
        for plugin_name in _state.order:
            impl = impls.get(plugin_name)
            record = _state.records[plugin_name]
            if impl is None or record.failed:
                continue
            entries = staged.setdefault(plugin_name, [])

            def register(
                obj_name: str, obj: Any = None, *, _kind=kind, _record=record, _entries=entries, **kw
            ):
                _entries.append(
                    make_entry(
                        _kind,
                        obj_name,
                        obj,
                        plugin=_record.name,
                        distribution=_record.distribution,
                        version=_record.version,
                        **kw,
                    )
                )

            try:
                impl.function(register=register)
            except Exception as err:
                staged.pop(plugin_name, None)
                _fail(record, f"{hook_name}() raised {type(err).__name__}: {err}")
    return [e for plugin_name in _state.order for e in staged.get(plugin_name, [])]


def registry() -> Registry:
    """The filled registry (plugins are loaded on the first call)."""
    with _state.lock:
        if _state.registry is not None:
            return _state.registry
        pm = plugin_manager()
        reg = Registry()
        by_plugin: dict[str, list[Entry]] = {}
        for entry in _call_hooks(pm):
            by_plugin.setdefault(entry.plugin, []).append(entry)
        for plugin_name in _state.order:
            entries = by_plugin.get(plugin_name, [])
            record = _state.records[plugin_name]
            try:
                reg.check_new(entries)
            except RegistryError as err:
                _fail(record, str(err))
                continue
            for e in entries:
                reg.add(e)
            record.registered = {}
            for e in entries:
                record.registered.setdefault(e.kind, []).append(e.name)
        _state.registry = reg
        return reg


def plugins() -> list[PluginRecord]:
    """Every plugin segzoo tried to load, in load order, with what it registered or why it failed."""
    with _state.lock:
        registry()
        loaded = [_state.records[n] for n in _state.order]
        failed = [r for n, r in _state.records.items() if n not in _state.order]
        return loaded + failed


def register_plugin(plugin: Any, name: str) -> PluginRecord:
    """Register a plugin object at run time (tests, notebooks) and rebuild the registry."""
    with _state.lock:
        pm = plugin_manager()
        if name in _state.records:
            raise ValueError(f"a plugin named {name!r} is already loaded")
        record = PluginRecord(name, builtin=False)
        _register(pm, plugin, record)
        _state.registry = None
        registry()
        return record


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with ``register_plugin`` and rebuild the registry."""
    with _state.lock:
        pm = plugin_manager()
        if name not in _state.records:
            raise ValueError(f"no plugin named {name!r} is loaded")
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        _state.records.pop(name)
        if name in _state.order:
            _state.order.remove(name)
        # Plugins refused only because this one took their names may load now.
        for record in _state.records.values():
            if record.error and "registered twice" in record.error and record.name in _state.order:
                record.error = None
        _state.registry = None


def reset() -> None:
    """Forget everything loaded; the next registry access loads plugins afresh (reads the env)."""
    with _state.lock:
        _state.pm = None
        _state.records = {}
        _state.order = []
        _state.registry = None
