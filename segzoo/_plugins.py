"""Plugin loading: built-ins and the ``segzoo`` entry points, through one pluggy PluginManager.

Loading is lazy (the first registry access) and never fatal: a plugin that fails to import, whose
hook raises, or that registers a name already taken is skipped as a whole, with a warning, and
shown as failed by ``segzoo plugins``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from ._registry import Entry, Kind, Registry, make_entry
from ._version import __version__
from ._warn import warn
from .errors import PluginWarning, RegistryError, UsageError

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
    "segzoo.convert",
)
# hook name -> the kind of thing its register callback adds
HOOKS: dict[str, Kind] = {
    "register_backbones": "backbone",
    "register_heads": "head",
    "register_models": "model",
    "register_converters": "converter",
}


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
        self.excluded: list[PluginRecord] = []  # installed entry points SEGZOO_PLUGINS leaves out
        self.clashed: set[str] = set()  # plugins refused for a name another plugin had taken


_state = _State()


def _fail(record: PluginRecord, message: str) -> None:
    record.error = message
    record.registered = {}
    warn(f"segzoo: plugin {record.name!r} skipped: {message}", PluginWarning)


def _selected_entry_points() -> list[metadata.EntryPoint]:
    """The entry points SEGZOO_PLUGINS chooses (all when unset). The ones it leaves out are kept
    in ``_state.excluded``; a name it gives that matches nothing becomes a failed record."""
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    choice = os.environ.get(ENV_VAR)
    _state.excluded = []
    if choice is None:
        return eps
    wanted = {c.strip() for c in choice.split(",") if c.strip()}
    chosen = [ep for ep in eps if ep.name in wanted or (ep.dist is not None and ep.dist.name in wanted)]
    _state.excluded = [_ep_record(ep) for ep in eps if ep not in chosen]
    known = {ep.name for ep in chosen} | {ep.dist.name for ep in chosen if ep.dist is not None}
    known |= {"segzoo", *BUILTIN_PLUGINS}  # built-ins always load
    for name in sorted(wanted - known - set(_state.records)):
        record = PluginRecord(name, builtin=False)
        _state.records[name] = record
        _fail(
            record,
            f"{ENV_VAR} names {name!r}, but no installed plugin has that entry-point or distribution "
            f"name (installed: {sorted(ep.name for ep in eps) or 'none'})",
        )
    return chosen


def _ep_record(ep: metadata.EntryPoint) -> PluginRecord:
    dist = ep.dist
    return PluginRecord(
        ep.name,
        builtin=False,
        distribution=dist.name if dist is not None else None,
        version=dist.version if dist is not None else None,
    )


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
        version = __version__
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
            record = _ep_record(ep)
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
                _state.clashed.add(plugin_name)
                _fail(record, str(err))
                continue
            for e in entries:
                reg.add(e)
            record.registered = {}
            for e in entries:
                record.registered.setdefault(e.kind, []).append(e.name)
        reg.note = _unknown_name_note()
        _state.registry = reg
        return reg


def _unknown_name_note() -> str:
    """What an unknown-name error adds: the plugins that might have provided the name."""
    parts = []
    if _state.excluded:
        names = ", ".join(repr(r.name) for r in _state.excluded)
        parts.append(f"{ENV_VAR} excludes the installed plugin(s) {names}")
    failed = [repr(r.name) for r in _state.records.values() if r.failed]
    if failed:
        parts.append(f"the plugin(s) {', '.join(failed)} failed to load (see `segzoo plugins`)")
    return f"Not loaded: {'; '.join(parts)}." if parts else ""


def plugins() -> list[PluginRecord]:
    """Every plugin segzoo tried to load, in load order, with what it registered or why it failed."""
    with _state.lock:
        registry()
        loaded = [_state.records[n] for n in _state.order]
        failed = [r for n, r in _state.records.items() if n not in _state.order]
        return loaded + failed


@dataclass
class RuntimePlugin(PluginRecord):
    """The record of a plugin added by :func:`register_plugin`; as a context manager it
    unregisters the plugin when the block ends."""

    def __enter__(self) -> RuntimePlugin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with _state.lock:
            if _state.records.get(self.name) is self:
                unregister_plugin(self.name)


def register_plugin(plugin: Any, name: str | None = None) -> RuntimePlugin:
    """Register a plugin object (a module, class or instance with ``@segzoo.hookimpl`` functions)
    at run time, for tests and notebooks, and rebuild the registry.

    Use it as a context manager (``with segzoo.register_plugin(obj, "mine") as record:``) to
    remove the plugin at the end of the block, or call :func:`unregister_plugin` yourself. A
    plugin that fails is reported as for installed ones: a ``PluginWarning`` and
    ``record.error``.
    """
    if name is None:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
    if not isinstance(name, str) or not name:
        raise UsageError(f"register_plugin(): the plugin name must be a non-empty string, got {name!r}")
    with _state.lock:
        pm = plugin_manager()
        if name in _state.records:
            raise UsageError(
                f"register_plugin(): a plugin named {name!r} is already loaded; choose another name"
            )
        record = RuntimePlugin(name, builtin=False)
        _register(pm, plugin, record)
        _state.registry = None
        registry()
        return record


def unregister_plugin(name: str) -> None:
    """Remove a plugin added by :func:`register_plugin` and rebuild the registry."""
    with _state.lock:
        pm = plugin_manager()
        record = _state.records.get(name)
        if not isinstance(record, RuntimePlugin):
            runtime = sorted(n for n, r in _state.records.items() if isinstance(r, RuntimePlugin))
            what = "is not one registered with register_plugin()" if record else "is not loaded"
            raise UsageError(
                f"unregister_plugin(): the plugin {name!r} {what} (run-time plugins: {runtime or 'none'})"
            )
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        _state.records.pop(name)
        if name in _state.order:
            _state.order.remove(name)
        # Plugins refused only because a name was taken may load now.
        _state.clashed.discard(name)
        for other in _state.clashed:
            _state.records[other].error = None
        _state.clashed = set()
        _state.registry = None


def list_plugins() -> list[PluginRecord]:
    """Every plugin segzoo loaded or tried to load (built-ins first), with its hooks, what it
    registered and, for a failed one, why (``record.error``); what ``segzoo plugins`` shows."""
    return plugins()


def excluded_plugins() -> list[PluginRecord]:
    """Installed plugins (``segzoo`` entry points) that ``SEGZOO_PLUGINS`` leaves out; none is
    imported."""
    with _state.lock:
        registry()
        return list(_state.excluded)


# PEP 508 distribution names and PEP 440 public versions (no epoch, no local part): only text of
# this shape is ever put into a suggested pip command.
_DIST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION_RE = re.compile(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?")


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def why_missing(distribution: Any, version: Any = None) -> str:
    """Why a part that ``distribution`` (``version``) provides is not registered, and the fix: a
    clause to follow "config.json needs the head 'x'," (e.g. "which is not installed: pip install
    'segzoo-x>=0.2'"). The arguments may come from an untrusted config.json: a pip command is
    only suggested for a well-formed distribution name and version."""
    with _state.lock:
        registry()
        records = plugins()
        excluded = list(_state.excluded)
    if not isinstance(distribution, str) or not _DIST_RE.fullmatch(distribution):
        return "which no loaded plugin provides: install the plugin that provides it (see `segzoo plugins`)"
    good_version = isinstance(version, str) and _VERSION_RE.fullmatch(version) is not None
    requirement = f"{distribution}>={version}" if good_version else distribution
    want = _canonical(distribution)
    if want == "segzoo":
        return f"which segzoo {__version__} does not provide: pip install --upgrade '{requirement}'"
    mine = [r for r in excluded if r.distribution and _canonical(r.distribution) == want]
    if mine:
        names = ", ".join(repr(r.name) for r in mine)
        return (
            f"which is provided by the installed plugin {names} ({mine[0].distribution} "
            f"{mine[0].version}), which {ENV_VAR} excludes: add it to {ENV_VAR} or unset it"
        )
    failed = [r for r in records if r.failed and r.distribution and _canonical(r.distribution) == want]
    if failed:
        r = failed[0]
        return (
            f"which the installed plugin {r.name!r} ({r.distribution} {r.version}) provides, but it "
            f"failed to load: {r.error} (see `segzoo plugins`)"
        )
    try:
        installed = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return f"which is not installed: pip install '{requirement}'"
    return f"which the installed {distribution} {installed} does not provide: pip install --upgrade '{requirement}'"


def reset() -> None:
    """Forget everything loaded; the next registry access loads plugins afresh (reads the env)."""
    with _state.lock:
        _state.pm = None
        _state.records = {}
        _state.order = []
        _state.registry = None
        _state.excluded = []
        _state.clashed = set()
