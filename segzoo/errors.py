"""segzoo's exceptions: one base class, one subclass per kind of failure.

Every error segzoo raises on purpose is a :class:`SegzooError`, so callers (and the CLI, which
prints these as one line and exits 2) can tell a user's mistake from a bug in segzoo. Each class
also derives from the built-in exception a Python user would expect (``ValueError``,
``LookupError``, ``OSError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DownloadError",
    "DuplicateNameError",
    "ExportError",
    "FolderError",
    "FolderNotFoundError",
    "HubAccessError",
    "HubNotFoundError",
    "PluginError",
    "PluginWarning",
    "RegistryError",
    "SegzooError",
    "UnknownNameError",
    "UnsafeCheckpointError",
    "UsageError",
    "WeightsError",
]


class SegzooError(Exception):
    """Base class of every error segzoo raises on purpose."""


class UsageError(SegzooError, ValueError):
    """Arguments that segzoo cannot act on (a wrong type, value or combination)."""


class UnknownNameError(SegzooError, LookupError):
    """A model, backbone, head or weight tag nobody registered; the message lists the closest."""

    def __str__(self) -> str:  # LookupError's KeyError-style quoting is not wanted here
        return str(self.args[0]) if self.args else ""


class RegistryError(SegzooError, ValueError):
    """A registration that cannot be accepted."""


class DuplicateNameError(RegistryError):
    """A name registered twice; the message names both plugins."""


class PluginError(SegzooError, LookupError):
    """A plugin that is needed but missing, excluded by ``SEGZOO_PLUGINS``, or failed to load."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FolderError(SegzooError, ValueError):
    """A model folder (or Hub repo) that is missing, incomplete or not a segzoo folder."""


class FolderNotFoundError(FolderError, FileNotFoundError):
    """A model folder, or its config.json or weights file, that does not exist."""


class ConfigError(FolderError):
    """A config.json that does not match segzoo's schema; the message names the field."""


class WeightsError(SegzooError, ValueError):
    """Weights that do not fit the model, or that are not safe or sound to load."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint that holds more than tensors: loading it would run code, so it is refused."""


class DownloadError(SegzooError, OSError):
    """A download that failed after its retries, or whose content did not match its hash."""


class HubNotFoundError(DownloadError, FileNotFoundError):
    """A Hub repository, revision or file that does not exist, or is not cached while offline."""


class HubAccessError(DownloadError, PermissionError):
    """The Hub refused a push: no token, a wrong one, or one without write access."""


class DataError(SegzooError, ValueError):
    """A dataset, image or annotation that cannot be read as asked."""


class ExportError(SegzooError, RuntimeError):
    """A model that cannot be exported in the requested format."""


class PluginWarning(RuntimeWarning):
    """A plugin was skipped; segzoo goes on without it."""
