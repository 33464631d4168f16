"""config.json of a segzoo folder: parsed and validated before anything is built.

A folder may come from anyone (the Hub), so every field is checked for presence, type and range
here, and unknown fields are refused; the text of a field never reaches a path, a URL, an import
or a command. Written by hand rather than with a JSON-schema library: segzoo's runtime
dependencies stay lean, and each message names the field and the value expected in plain words.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._constants import IGNORE_INDEX
from ._version import __version__
from .errors import ConfigError, FolderNotFoundError

CONFIG_NAME = "config.json"
FORMAT = "segzoo"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20  # a real config.json is a few KB
MAX_NUM_CLASSES = 65536
MAX_RESIZE = 8192
MAX_DEPTH = 6  # of nested lists/dicts in builder kwargs
MAX_STR = 512

# Arguments that make a builder read a file or fetch a URL (timm's among them): never from a folder.
LOADER_KWARGS = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "pretrained_strict",
        "checkpoint_path",
        "cache_dir",
        "weights",
        "weights_backbone",
        "url",
        "file",
        "path",
        "model_dir",
    }
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_BACKBONE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(:[A-Za-z0-9][A-Za-z0-9_\-.]*)?$")
_KWARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
ROLES = ("backbone", "head", "aux_head", "recipe")

_FIELDS = {
    "format", "format_version", "segzoo_version", "save_id", "backbone", "head", "num_classes", "recipe",
    "aux", "aux_head", "backbone_kwargs", "head_kwargs", "aux_head_kwargs", "labels", "id2label",
    "label2id", "preprocessing", "ignore_index", "providers", "weights",
}  # fmt: skip


def _fail(where: str, field: str, expected: str, got: Any) -> ConfigError:
    shown = repr(got)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ConfigError(f"{where}: field {field!r} must be {expected}, got {shown}")


def _int(cfg: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    v = cfg[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _fail(where, key, f"an integer from {lo} to {hi}", v)
    return v


def _str(v: Any, where: str, field: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if not isinstance(v, str) or not v or len(v) > MAX_STR or (pattern is not None and not pattern.match(v)):
        raise _fail(where, field, what or f"a string of at most {MAX_STR} characters", v)
    return v


def _opt_str(v: Any, where: str, field: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > 4 * MAX_STR:
        raise _fail(where, field, "a string or null", v)
    return v


def check_value(v: Any, where: str, field: str, depth: int = 0) -> None:
    """A builder argument: JSON scalars, and lists / string-keyed objects of them, not too deep."""
    if depth > MAX_DEPTH:
        raise _fail(where, field, f"nested at most {MAX_DEPTH} levels", "...")
    if v is None or isinstance(v, bool | int | str):
        if isinstance(v, str) and len(v) > MAX_STR:
            raise _fail(where, field, f"a string of at most {MAX_STR} characters", v)
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _fail(where, field, "a finite number", v)
        return
    if isinstance(v, list):
        if len(v) > 256:
            raise _fail(where, field, "a list of at most 256 items", f"{len(v)} items")
        for i, item in enumerate(v):
            check_value(item, where, f"{field}[{i}]", depth + 1)
        return
    if isinstance(v, dict):
        for k, item in v.items():
            check_value(item, where, f"{field}.{k}", depth + 1)
        return
    raise _fail(where, field, "a JSON number, string, boolean, list or object", v)


def check_kwargs(v: Any, where: str, field: str) -> dict[str, Any]:
    """``backbone_kwargs`` and friends: an object of argument names to plain values, never a
    loading argument (``pretrained``, ``checkpoint_path``, ...)."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fail(where, field, "an object of argument names to values", v)
    for k, item in v.items():
        if not _KWARG.match(k):
            raise _fail(where, f"{field}.{k}", "a Python argument name", k)
        if k in LOADER_KWARGS or k.startswith("pretrained"):
            raise ConfigError(
                f"{where}: {field} sets {k!r}, an argument that makes a builder load files or URLs; a model "
                "folder may not set it (weights come from its model.safetensors only)"
            )
        check_value(item, where, f"{field}.{k}")
    return dict(v)


def _check_preprocessing(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, "preprocessing", "an object with resize, mean, std, interpolation", v)
    unknown = set(v) - {"resize", "mean", "std", "interpolation"}
    if unknown:
        raise _fail(where, "preprocessing", "resize, mean, std and interpolation only", sorted(unknown))
    resize = v.get("resize")
    if resize is not None and (
        not isinstance(resize, int) or isinstance(resize, bool) or not 1 <= resize <= MAX_RESIZE
    ):
        raise _fail(where, "preprocessing.resize", f"null or an integer from 1 to {MAX_RESIZE}", resize)
    for key, positive in (("mean", False), ("std", True)):
        seq = v.get(key)
        if seq is None:
            continue
        ok = (
            isinstance(seq, list)
            and len(seq) == 3
            and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in seq)
            and (not positive or all(x > 0 for x in seq))
        )
        if not ok:
            what = "three positive numbers" if positive else "three finite numbers"
            raise _fail(where, f"preprocessing.{key}", f"a list of {what} (one per RGB channel)", seq)
    interp = v.get("interpolation", "bilinear")
    if interp not in INTERPOLATIONS:
        raise _fail(where, "preprocessing.interpolation", f"one of {list(INTERPOLATIONS)}", interp)
    return dict(v)


def _check_providers(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict) or set(v) - set(ROLES):
        raise _fail(where, "providers", f"an object with keys among {list(ROLES)}", v)
    out = {}
    for role, prov in v.items():
        if not isinstance(prov, dict) or set(prov) - {"plugin", "distribution", "version"}:
            raise _fail(where, f"providers.{role}", "an object with plugin, distribution, version", prov)
        for key in ("plugin", "distribution", "version"):
            _opt_str(prov.get(key), where, f"providers.{role}.{key}")
        out[role] = dict(prov)
    return out


def _check_labels(cfg: dict[str, Any], where: str, num_classes: int) -> None:
    labels = cfg.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or len(labels) != num_classes:
            raise _fail(where, "labels", f"null or a list of {num_classes} strings (num_classes)", labels)
        for i, label in enumerate(labels):
            _str(label, where, f"labels[{i}]", what="a non-empty label of at most 512 characters")
    id2label = cfg.get("id2label")
    if id2label is not None:
        want = {str(i): label for i, label in enumerate(labels)} if labels is not None else None
        if not isinstance(id2label, dict) or (want is not None and id2label != want):
            raise _fail(where, "id2label", 'an object {"0": label, ...} matching labels', id2label)
    label2id = cfg.get("label2id")
    if label2id is not None and (
        not isinstance(label2id, dict)
        or (labels is not None and label2id != {label: i for i, label in enumerate(labels)})
    ):
        raise _fail(where, "label2id", "an object {label: index, ...} matching labels", label2id)


def _check_weights(v: Any, where: str) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) - {"tag", "source", "license", "metrics", "sha256"}:
        raise _fail(where, "weights", "an object with tag, source, license, metrics, sha256", v)
    for key in ("tag", "source", "license", "sha256"):
        _opt_str(v.get(key), where, f"weights.{key}")
    metrics = v.get("metrics")
    if metrics is not None:
        check_value(metrics, where, "weights.metrics")
    return dict(v)


def validate_config(cfg: Any, where: str = CONFIG_NAME) -> dict[str, Any]:
    """Check a parsed config.json against segzoo's schema; return it (a new dict)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} must hold a JSON object, got {type(cfg).__name__}")
    if cfg.get("format") != FORMAT:
        raise ConfigError(f'{where} is not a segzoo config (no "format": "segzoo")')
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{where} has format_version {version!r}; this segzoo ({__version__}) reads version "
            f"{FORMAT_VERSION}. Upgrade segzoo (pip install -U segzoo) or re-save the model."
        )
    unknown = sorted(set(cfg) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {unknown}; segzoo {__version__} knows {sorted(_FIELDS)}"
        )
    for key in ("backbone", "head", "num_classes"):
        if cfg.get(key) is None:
            raise ConfigError(f"{where} lacks {key!r}, which every segzoo config.json has")
    out = dict(cfg)
    _str(cfg["backbone"], where, "backbone", _BACKBONE, "a registered backbone name such as 'resnet50'")
    _str(cfg["head"], where, "head", _NAME, "a registered head name such as 'deeplabv3'")
    num_classes = _int(cfg, "num_classes", where, 1, MAX_NUM_CLASSES)
    if cfg.get("recipe") is not None:
        _str(cfg["recipe"], where, "recipe", _NAME, "null or a registered recipe name")
    if not isinstance(cfg.get("aux", False), bool):
        raise _fail(where, "aux", "true or false", cfg.get("aux"))
    _str(cfg.get("aux_head", "fcn"), where, "aux_head", _NAME, "a registered head name")
    for key in ("backbone_kwargs", "head_kwargs", "aux_head_kwargs"):
        out[key] = check_kwargs(cfg.get(key), where, key)
    _check_labels(cfg, where, num_classes)
    if cfg.get("preprocessing") is not None:
        out["preprocessing"] = _check_preprocessing(cfg["preprocessing"], where)
    if "ignore_index" in cfg:
        _int(cfg, "ignore_index", where, -1, 65535)
    else:
        out["ignore_index"] = IGNORE_INDEX
    out["providers"] = _check_providers(cfg.get("providers"), where)
    out["weights"] = _check_weights(cfg.get("weights"), where)
    if cfg.get("save_id") is not None and not _HEX.match(str(cfg["save_id"])):
        raise _fail(where, "save_id", "hex digits", cfg["save_id"])
    _opt_str(cfg.get("segzoo_version"), where, "segzoo_version")
    return out


def parse_config(text: bytes | str, where: str = CONFIG_NAME) -> dict[str, Any]:
    """Parse and validate config.json text."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} is {len(text)} bytes; a segzoo config.json is at most {MAX_CONFIG_BYTES}")
    try:
        cfg = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where} is not valid JSON ({err}); re-save or re-download the model") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a segzoo config.json") from None
    return validate_config(cfg, where)


def _no_constant(name: str) -> Any:
    raise ConfigError(f"{CONFIG_NAME} holds {name}, which is not JSON")


def read_config(directory: str | Path) -> dict[str, Any]:
    """The validated config.json of a segzoo folder."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise FolderNotFoundError(f"no segzoo folder at {directory}")
    if not path.is_file():
        raise FolderNotFoundError(
            f"{directory} has no {CONFIG_NAME}: not a segzoo folder (save one with model.save_pretrained)"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not a segzoo config.json")
    return parse_config(path.read_bytes(), str(path))
