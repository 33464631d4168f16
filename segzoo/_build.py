"""Building: create()'s arguments or a config.json -> a BuildSpec -> a SegmentationModel.

Builder keyword arguments are routed and checked against what each builder declares; a folder's
config can only pass arguments its builders name (never a loading argument such as
``checkpoint_path``: see _config.LOADER_KWARGS).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._config import LOADER_KWARGS
from ._constants import DEFAULT_PREPROCESSING, IGNORE_INDEX
from ._folder import load_state_file
from ._loading import NeedsRealBuild, load_state, no_init
from ._plugins import registry, why_missing
from ._registry import Entry, Recipe, unknown_name_message
from .errors import ConfigError, PluginError, SegzooError, UnknownNameError, UsageError
from .model import SegmentationModel

DEFAULT_AUX_HEAD_KWARGS = {"in_feature": "aux"}


@dataclass
class BuildSpec:
    """Everything needed to build a model; what config.json records."""

    backbone: Any  # a registered name, or a module with feature_info
    head: str
    num_classes: int
    recipe: str | None = None
    aux: bool = False
    aux_head: str = "fcn"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    aux_head_kwargs: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    ignore_index: int = IGNORE_INDEX
    pretrained_backbone: bool = False  # a build-time switch, not part of the saved config

    def to_config(self) -> dict[str, Any]:
        """A JSON-able dict; a module passed as backbone is recorded as None (not rebuildable)."""
        backbone = self.backbone if isinstance(self.backbone, str) else None
        cfg = asdict(replace(self, backbone=backbone))
        del cfg["pretrained_backbone"]
        return cfg


def _params(builder: Callable[..., Any], skip: int) -> tuple[set[str], bool]:
    """Keyword parameters of a builder (after its first ``skip`` positionals) and whether it
    takes **kwargs."""
    params = list(inspect.signature(builder).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:skip]
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    names -= {p.name for p in positional}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def declared_kwargs(entry: Entry) -> set[str]:
    """The keyword arguments a config.json may pass to a builder: those it names, plus, for a
    builder taking ``**kwargs``, the names in its ``accepted_kwargs`` attribute; never a loading
    argument."""
    skip = 1 if entry.is_family else 2 if entry.kind == "head" else 0
    names, var = _params(entry.obj, skip)
    if var:
        names |= set(getattr(entry.obj, "accepted_kwargs", ()))
    return {n for n in names if n not in LOADER_KWARGS and not n.startswith("pretrained")}


def _check_declared(entry: Entry, kwargs: dict[str, Any], field_name: str, where: str) -> None:
    allowed = declared_kwargs(entry)
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise ConfigError(
            f"{where}: {field_name} passes {extra}, which the {entry.kind} {entry.name!r} does not take "
            f"from a config (it takes {sorted(allowed) or 'none'})"
        )


def _backbone_entry(name: str) -> tuple[Entry, tuple[str, ...]]:
    entry = registry().get("backbone", name)
    return entry, ((name.split(":", 1)[1],) if entry.is_family else ())


def _route_kwargs(kwargs: dict[str, Any], backbone: Any, head: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send each extra keyword of create() to the backbone or the head builder that takes it."""
    if not kwargs:
        return {}, {}
    hnames, hvar = _params(registry().get("head", head).obj, 2)
    if isinstance(backbone, str):
        entry, variant = _backbone_entry(backbone)
        bnames, bvar = _params(entry.obj, len(variant))
    else:
        bnames, bvar = set(), False
    bkw, hkw = {}, {}
    for k, v in kwargs.items():
        to_b, to_h = k in bnames, k in hnames
        if to_b and to_h:
            raise UsageError(
                f"create(): {k!r} is taken by both the backbone and the head; pass it as "
                f"backbone_kwargs={{{k!r}: ...}} or head_kwargs={{{k!r}: ...}}"
            )
        if to_b or (bvar and not to_h):
            bkw[k] = v
        elif to_h or hvar:
            hkw[k] = v
        else:
            raise UsageError(
                f"create() got an unexpected keyword argument {k!r}: the backbone takes "
                f"{sorted(bnames) or 'none'}, the head {head!r} takes {sorted(hnames) or 'none'}"
            )
    return bkw, hkw


def resolve_spec(
    name: str | None = None,
    *,
    num_classes: int | None = None,
    aux: bool | None = None,
    backbone: str | nn.Module | None = None,
    head: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    aux_head_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> BuildSpec:
    """Turn create()'s arguments into a BuildSpec (no model is built)."""
    reg = registry()
    recipe: Recipe | None = None
    if name is not None:
        try:
            recipe = reg.get("model", name).obj
        except UnknownNameError:
            try:
                reg.get("head", name)
            except UnknownNameError:
                heads = reg.names("head")
                raise UnknownNameError(
                    unknown_name_message("model", name, reg.names("model"), also=heads, note=reg.note)
                    + f" A head ({', '.join(heads)}) with backbone=... builds any combination."
                ) from None
            if head is not None and head != name:
                raise UsageError(f"create({name!r}, head={head!r}): give the head once") from None
            head = name
    if recipe is None:
        if head is None:
            raise UsageError("create() needs a model name, or head=... and backbone=...")
        if backbone is None:
            raise UsageError(
                f"create({head!r}) builds a bare head: say which backbone, e.g. "
                f"create({head!r}, backbone='resnet50', num_classes=...)"
            )
    _check_num_classes(num_classes)

    head_name = head or recipe.head  # type: ignore[union-attr]
    reg.get("head", head_name)  # a clear error for an unknown head
    bb = backbone if backbone is not None else recipe.backbone  # type: ignore[union-attr]
    if isinstance(bb, str):
        _backbone_entry(bb)
    elif not isinstance(bb, nn.Module):
        raise UsageError(f"backbone must be a registered name or an nn.Module, got {type(bb).__name__}")
    elif not hasattr(bb, "feature_info"):
        raise UsageError(
            f"the backbone module ({type(bb).__name__}) has no feature_info: wrap it, e.g. "
            "segzoo.FeatureExtractor(net, return_nodes={'layer3': 'aux', 'layer4': 'out'})"
        )

    extra_b, extra_h = _route_kwargs(kwargs, bb, head_name)
    defaults_b: dict[str, Any] = {}
    defaults_h: dict[str, Any] = {}
    if recipe is not None:
        # Recipe defaults carry over to an overridden backbone or head only where it takes them.
        defaults_b = _accepted(dict(recipe.backbone_kwargs), bb)
        defaults_h = dict(recipe.head_kwargs) if head_name == recipe.head else {}

    n_cls = num_classes if num_classes is not None else (recipe.num_classes if recipe else None)
    if n_cls is None:
        raise UsageError(f"create({head_name!r}, backbone=...) needs num_classes")
    labels = (
        list(recipe.labels) if recipe is not None and recipe.labels and n_cls == recipe.num_classes else None
    )
    return BuildSpec(
        backbone=bb,
        head=head_name,
        num_classes=n_cls,
        recipe=recipe.name if recipe is not None else None,
        aux=bool(aux if aux is not None else (recipe.aux if recipe else False)),
        aux_head=recipe.aux_head if recipe is not None else "fcn",
        backbone_kwargs={**defaults_b, **(backbone_kwargs or {}), **extra_b},
        head_kwargs={**defaults_h, **(head_kwargs or {}), **extra_h},
        aux_head_kwargs={
            **DEFAULT_AUX_HEAD_KWARGS,
            **(recipe.aux_head_kwargs if recipe is not None else {}),
            **(aux_head_kwargs or {}),
        },
        labels=labels,
        preprocessing=dict(recipe.preprocessing) if recipe is not None else dict(DEFAULT_PREPROCESSING),
    )


def _check_num_classes(num_classes: Any) -> None:
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise UsageError(f"num_classes must be a positive int, got {num_classes!r}")


def _accepted(kwargs: dict[str, Any], backbone: Any) -> dict[str, Any]:
    if not isinstance(backbone, str):
        return {}
    entry, variant = _backbone_entry(backbone)
    names, var = _params(entry.obj, len(variant))
    return kwargs if var else {k: v for k, v in kwargs.items() if k in names}


def build_model(spec: BuildSpec) -> SegmentationModel:
    """Build the model a BuildSpec describes (random init, on the current default device)."""
    reg = registry()
    providers: dict[str, Any] = {}
    if isinstance(spec.backbone, str):
        entry, variant = _backbone_entry(spec.backbone)
        kwargs = dict(spec.backbone_kwargs)
        if "pretrained" in kwargs:  # weights load only when asked at create(), never from kwargs
            raise UsageError(
                f"backbone_kwargs of {spec.backbone!r} set 'pretrained'; remove it and pass "
                "pretrained_backbone=True to create() to load the backbone's own weights"
            )
        if spec.pretrained_backbone:
            names, var = _params(entry.obj, len(variant))
            if "pretrained" not in names and not var:
                raise UsageError(
                    f"backbone {spec.backbone!r} has no pretrained weights to load (pretrained_backbone=True)"
                )
            kwargs["pretrained"] = True
        backbone = _call(entry, "backbone", spec.backbone, *variant, **kwargs)
        if not hasattr(backbone, "feature_info"):
            raise UsageError(
                f"backbone {spec.backbone!r} ({entry.provided_by()}) returned a module without feature_info"
            )
        providers["backbone"] = entry.provider()
    else:
        backbone = spec.backbone
    head_entry = reg.get("head", spec.head)
    head = _call(head_entry, "head", spec.head, backbone.feature_info, spec.num_classes, **spec.head_kwargs)
    providers["head"] = head_entry.provider()
    aux_head = None
    if spec.aux:
        aux_entry = reg.get("head", spec.aux_head)
        aux_head = _call(
            aux_entry,
            "aux head",
            spec.aux_head,
            backbone.feature_info,
            spec.num_classes,
            **spec.aux_head_kwargs,
        )
        providers["aux_head"] = aux_entry.provider()
    if spec.recipe is not None:
        providers["recipe"] = reg.get("model", spec.recipe).provider()
    config = spec.to_config()
    config["providers"] = providers
    return SegmentationModel(backbone, head, aux_head, config=config)


def _check_call(entry: Entry, role: str, name: str, n_args: int, kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments a builder does not take before calling it."""
    try:
        inspect.signature(entry.obj).bind(*range(n_args), **kwargs)
    except TypeError as err:
        raise UsageError(f"{role} {name!r} ({entry.provided_by()}): {err}") from None


def _call(entry: Entry, role: str, name: str, *args: Any, **kwargs: Any) -> nn.Module:
    _check_call(entry, role, name, len(args), kwargs)
    try:
        module = entry.obj(*args, **kwargs)
    except SegzooError:
        raise
    except (TypeError, ValueError, RuntimeError) as err:  # a builder (or torch) refusing a value
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UsageError(
            f"{role} {name!r} ({entry.provided_by()}) could not be built with ({shown}): {err}"
        ) from err
    if not isinstance(module, nn.Module):
        raise UsageError(
            f"{role} {name!r} ({entry.provided_by()}) returned {type(module).__name__}, not an nn.Module"
        )
    return module


def spec_from_config(cfg: dict[str, Any], where: Any = "config.json") -> BuildSpec:
    """The BuildSpec of a validated config.json (see _config.validate_config). Every part must be
    registered and every builder argument one its builder declares; a missing part is named with
    the plugin that provides it."""
    reg = registry()
    providers = cfg.get("providers") or {}
    parts = [("backbone", "backbone", cfg["backbone"]), ("head", "head", cfg["head"])]
    if cfg.get("aux"):
        parts.append(("aux_head", "head", cfg.get("aux_head", "fcn")))
    kwargs_of = {"backbone": "backbone_kwargs", "head": "head_kwargs", "aux_head": "aux_head_kwargs"}
    for role, kind, part in parts:
        try:
            entry = reg.get(kind, part)  # type: ignore[arg-type]
        except UnknownNameError:
            raise PluginError(_missing_part(where, kind, part, providers.get(role) or {})) from None
        _check_declared(entry, cfg.get(kwargs_of[role]) or {}, kwargs_of[role], str(where))
    return BuildSpec(
        backbone=cfg["backbone"],
        head=cfg["head"],
        num_classes=cfg["num_classes"],
        recipe=cfg.get("recipe"),
        aux=cfg.get("aux", False),
        aux_head=cfg.get("aux_head", "fcn"),
        backbone_kwargs=dict(cfg.get("backbone_kwargs") or {}),
        head_kwargs=dict(cfg.get("head_kwargs") or {}),
        aux_head_kwargs=dict(cfg.get("aux_head_kwargs") or DEFAULT_AUX_HEAD_KWARGS),
        labels=cfg.get("labels"),
        preprocessing=dict(cfg.get("preprocessing") or DEFAULT_PREPROCESSING),
        ignore_index=cfg.get("ignore_index", IGNORE_INDEX),
    )


def _missing_part(where: Any, kind: str, part: str, provider: dict[str, Any]) -> str:
    """Why a part a config.json needs is not registered, and what to do; config text is quoted
    (repr), and a pip command is suggested only for a well-formed name and version."""
    dist = provider.get("distribution")
    origin = f" from {dist!r}" if isinstance(dist, str) and dist else ""
    return f"{where} needs the {kind} {part!r}{origin}, {why_missing(dist, provider.get('version'))}"


def apply_overrides(
    spec: BuildSpec,
    *,
    num_classes: int | None = None,
    aux: bool | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    aux_head_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> BuildSpec:
    """A copy of ``spec`` with create()'s overrides applied (for saved folders)."""
    _check_num_classes(num_classes)
    extra_b, extra_h = _route_kwargs(kwargs, spec.backbone, spec.head)
    labels = spec.labels if num_classes in (None, spec.num_classes) else None
    return replace(
        spec,
        num_classes=num_classes if num_classes is not None else spec.num_classes,
        aux=spec.aux if aux is None else aux,
        backbone_kwargs={**spec.backbone_kwargs, **(backbone_kwargs or {}), **extra_b},
        head_kwargs={**spec.head_kwargs, **(head_kwargs or {}), **extra_h},
        aux_head_kwargs={**spec.aux_head_kwargs, **(aux_head_kwargs or {})},
        labels=labels,
    )


def build_with_weights(
    spec: BuildSpec, weights: Path, *, save_id: str | None = None, ignore_mismatched: bool = False
) -> SegmentationModel:
    """Build on the meta device (no random init, no memory) and load the safetensors file with
    ``assign=True``, so the weights are held once, memory-mapped. The auxiliary head may be absent
    from the file (then it is initialised) or present and unwanted (then it is dropped)."""
    state_dict = load_state_file(weights, save_id=save_id)
    load = functools.partial(
        load_state,
        state_dict=state_dict,
        source=str(weights),
        ignore_mismatched=ignore_mismatched,
        optional_prefixes=("aux_classifier.",),
    )
    try:
        with torch.device("meta"), no_init():
            model = build_model(spec)
        load(model)
    except NeedsRealBuild:
        # a buffer computed in __init__ (not saved) cannot be recovered on meta: build for real
        model = build_model(spec)
        load(model)
    return model
