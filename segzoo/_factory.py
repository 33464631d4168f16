"""create(): a name or head x backbone -> the registry -> a built SegmentationModel."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._plugins import registry
from ._registry import (
    DEFAULT_PREPROCESSING,
    Entry,
    Recipe,
    UnknownNameError,
    filter_names,
    unknown_name_message,
)
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
    ignore_index: int = 255
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
            raise TypeError(
                f"create(): {k!r} is taken by both the backbone and the head; pass it as "
                f"backbone_kwargs={{{k!r}: ...}} or head_kwargs={{{k!r}: ...}}"
            )
        if to_b or (bvar and not to_h):
            bkw[k] = v
        elif to_h or hvar:
            hkw[k] = v
        else:
            raise TypeError(
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
        if not isinstance(name, str) or not name:
            raise TypeError(f"create(): the model name must be a non-empty string, got {name!r}")
        try:
            recipe = reg.get("model", name).obj
        except UnknownNameError:
            try:
                reg.get("head", name)
            except UnknownNameError:
                heads = reg.names("head")
                raise UnknownNameError(
                    unknown_name_message("model", name, reg.names("model") + heads)
                    + f" A head ({', '.join(heads)}) with backbone=... builds any combination."
                ) from None
            if head is not None and head != name:
                raise TypeError(f"create({name!r}, head={head!r}): give the head once") from None
            head = name
    if recipe is None:
        if head is None:
            raise TypeError("create() needs a model name, or head=... and backbone=...")
        if backbone is None:
            raise TypeError(
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
        raise TypeError(f"backbone must be a registered name or an nn.Module, got {type(bb).__name__}")
    elif not hasattr(bb, "feature_info"):
        raise TypeError(
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
        raise TypeError(f"create({head_name!r}, backbone=...) needs num_classes")
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
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


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
        if spec.pretrained_backbone:
            names, var = _params(entry.obj, len(variant))
            if "pretrained" not in names and not var:
                raise TypeError(
                    f"backbone {spec.backbone!r} has no pretrained weights to load (pretrained_backbone=True)"
                )
            kwargs["pretrained"] = True
        backbone = _call(entry, "backbone", spec.backbone, *variant, **kwargs)
        if not hasattr(backbone, "feature_info"):
            raise TypeError(
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


def _call(entry: Entry, role: str, name: str, *args: Any, **kwargs: Any) -> nn.Module:
    try:
        module = entry.obj(*args, **kwargs)
    except TypeError as err:
        if "argument" in str(err):
            raise TypeError(f"{role} {name!r} ({entry.provided_by()}): {err}") from err
        raise
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"{role} {name!r} ({entry.provided_by()}) returned {type(module).__name__}, not an nn.Module"
        )
    return module


def create(
    name: str | None = None,
    *,
    pretrained: bool = False,
    pretrained_backbone: bool = False,
    num_classes: int | None = None,
    aux: bool | None = None,
    backbone: str | nn.Module | None = None,
    head: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    aux_head_kwargs: dict[str, Any] | None = None,
    ignore_mismatched: bool = False,
    token: str | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Build a model from a recipe, a saved folder, a Hub repo, or any head x backbone.

    - ``create("deeplabv3_resnet101", pretrained=True)``: a recipe with its default weight tag;
      ``create("deeplabv3_resnet101.tv_coco_voc", pretrained=True)`` a named tag.
    - ``create("local-dir:PATH")`` / ``create("hf-hub:ORG/REPO@REVISION")``: rebuilt from
      config.json, weights loaded.
    - ``create("deeplabv3", backbone="timm:convnext_tiny", num_classes=5)``: a head on any
      backbone (a registered name, or a module with ``feature_info`` such as a FeatureExtractor).

    Extra keyword arguments go to the backbone or head builder that takes them (``output_stride``,
    ``atrous_rates``, ...). With weights, a ``num_classes`` different from the checkpoint is an
    error unless ``ignore_mismatched=True``, which re-initialises the layers that differ.
    ``pretrained_backbone=True`` loads backbone-only weights (ImageNet for torchvision backbones,
    timm's own for ``timm:`` ones).
    """
    overrides = dict(
        num_classes=num_classes,
        aux=aux,
        backbone_kwargs=backbone_kwargs,
        head_kwargs=head_kwargs,
        aux_head_kwargs=aux_head_kwargs,
        **kwargs,
    )
    if isinstance(name, str) and name.startswith(("local-dir:", "hf-hub:")):
        if backbone is not None or head is not None:
            raise TypeError(
                f"create({name!r}) rebuilds the saved architecture; backbone= and head= cannot change it"
            )
        if pretrained_backbone:
            raise TypeError(f"create({name!r}) loads a whole model; pretrained_backbone=True does not apply")
        if name.startswith("local-dir:"):
            folder = Path(name[len("local-dir:") :]).expanduser()
        else:
            from .hub import download_folder, parse_hub_name

            folder = download_folder(*parse_hub_name(name[len("hf-hub:") :]), token=token)
        return load_folder(folder, ignore_mismatched=ignore_mismatched, **overrides)

    tag = None
    if isinstance(name, str) and "." in name:
        name, tag = name.split(".", 1)
    spec = resolve_spec(name, backbone=backbone, head=head, **overrides)
    spec.pretrained_backbone = pretrained_backbone
    if tag is None and not pretrained:
        return build_model(spec)

    # A tag describes a model (classes, aux head, labels, preprocessing) even without its weights,
    # as in timm; pretrained=True loads them too.
    if pretrained and pretrained_backbone:
        raise TypeError("pretrained=True loads the whole model; drop pretrained_backbone=True")
    recipe = registry().get("model", name).obj if name is not None and spec.recipe else None
    if recipe is None or not recipe.weights:
        raise ValueError(
            f"{spec.recipe or spec.head} has no pretrained weights: use pretrained=False, "
            f"or a recipe from segzoo.list_models(pretrained=True)"
        )
    tag = tag or recipe.default_tag
    if tag not in recipe.weights:
        raise UnknownNameError(
            unknown_name_message(
                "model", f"{recipe.name}.{tag}", [f"{recipe.name}.{t}" for t in recipe.weights]
            )
        )
    ws = recipe.weights[tag]
    spec.num_classes = num_classes if num_classes is not None else ws.num_classes
    spec.aux = aux if aux is not None else ws.aux
    if ws.labels and spec.num_classes == ws.num_classes:
        spec.labels = list(ws.labels)
    if ws.preprocessing:
        spec.preprocessing = dict(ws.preprocessing)
    if not pretrained:
        return build_model(spec)
    from ._weights import fetch_weights
    from .hub import WEIGHTS_NAME, read_config

    folder = fetch_weights(recipe.name, tag, ws, token=token)
    save_id = read_config(folder).get("save_id")
    model = build_with_weights(
        spec, folder / WEIGHTS_NAME, save_id=save_id, ignore_mismatched=ignore_mismatched
    )
    model.config["weights"] = ws.card_metadata(tag)
    return model


def load_folder(
    folder: str | os.PathLike, *, ignore_mismatched: bool = False, **overrides: Any
) -> SegmentationModel:
    """Rebuild a model from a segzoo folder (config.json) and load its model.safetensors."""
    from .hub import WEIGHTS_NAME, read_config

    folder = Path(folder)
    cfg = read_config(folder)
    spec = spec_from_config(cfg, folder)
    spec = apply_overrides(spec, **overrides)
    model = build_with_weights(
        spec, folder / WEIGHTS_NAME, save_id=cfg.get("save_id"), ignore_mismatched=ignore_mismatched
    )
    if cfg.get("weights"):
        model.config["weights"] = cfg["weights"]
    return model


def spec_from_config(cfg: dict[str, Any], where: Any = "config.json") -> BuildSpec:
    """The BuildSpec config.json records; a missing plugin is named with its distribution."""
    reg = registry()
    providers = cfg.get("providers") or {}
    parts = [("backbone", "backbone", cfg["backbone"]), ("head", "head", cfg["head"])]
    if cfg.get("aux"):
        parts.append(("aux_head", "head", cfg.get("aux_head", "fcn")))
    for role, kind, part in parts:
        try:
            reg.get(kind, part)  # type: ignore[arg-type]
        except UnknownNameError:
            prov = providers.get(role) or {}
            dist = prov.get("distribution")
            fix = (
                f"install the distribution that provides it: pip install '{dist}>={prov.get('version')}'"
                if dist and dist != "segzoo"
                else "upgrade segzoo, or install the plugin that provides it"
            )
            raise UnknownNameError(
                f"{where} needs the {kind} {part!r}"
                + (f" from {dist} {prov.get('version')}" if dist else "")
                + f", which is not installed: {fix}"
            ) from None
    return BuildSpec(
        backbone=cfg["backbone"],
        head=cfg["head"],
        num_classes=int(cfg["num_classes"]),
        recipe=cfg.get("recipe"),
        aux=bool(cfg.get("aux", False)),
        aux_head=cfg.get("aux_head", "fcn"),
        backbone_kwargs=dict(cfg.get("backbone_kwargs") or {}),
        head_kwargs=dict(cfg.get("head_kwargs") or {}),
        aux_head_kwargs=dict(cfg.get("aux_head_kwargs") or DEFAULT_AUX_HEAD_KWARGS),
        labels=cfg.get("labels"),
        preprocessing=dict(cfg.get("preprocessing") or DEFAULT_PREPROCESSING),
        ignore_index=int(cfg.get("ignore_index", 255)),
    )


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
    from ._loading import NeedsRealBuild, load_state, no_init
    from .hub import load_state_file

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


def list_models(
    filter: str | Iterable[str] = "", exclude_filters: str | Iterable[str] = (), pretrained: bool = False
) -> list[str]:
    """Registered model recipes, optionally filtered by fnmatch patterns (``"deeplab*"``).

    ``pretrained=True`` lists ``name.tag`` for every weight tag instead (the default tag first).
    """
    reg = registry()
    if not pretrained:
        return reg.names("model", filter, exclude_filters)
    names = []
    for entry in reg.entries("model"):
        recipe = entry.obj
        tags = sorted(recipe.weights, key=lambda t: t != recipe.default_tag)
        names += [f"{entry.name}.{t}" for t in tags]
    return filter_names(names, filter, exclude_filters)


def list_backbones(filter: str | Iterable[str] = "", exclude_filters: str | Iterable[str] = ()) -> list[str]:
    """Registered backbones; a family such as ``timm:*`` serves any name after its prefix."""
    return registry().names("backbone", filter, exclude_filters)


def list_heads(filter: str | Iterable[str] = "", exclude_filters: str | Iterable[str] = ()) -> list[str]:
    """Registered heads."""
    return registry().names("head", filter, exclude_filters)


def model_info(name: str) -> dict[str, Any]:
    """What a recipe builds: parameter count, features, defaults and the plugin providing it.

    The model is built on the meta device, so this allocates no weights.
    """
    name = name.split(".", 1)[0]
    entry = registry().get("model", name)
    recipe: Recipe = entry.obj
    spec = resolve_spec(name)
    with torch.device("meta"):
        model = build_model(spec)
    return {
        "name": name,
        "description": recipe.description,
        "provider": entry.provider(),
        "backbone": recipe.backbone,
        "head": recipe.head,
        "aux": recipe.aux,
        "aux_head": recipe.aux_head,
        "num_classes": recipe.num_classes,
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_params_with_aux": _params_with_aux(spec, model),
        "features": model.backbone.feature_info.to_list(),
        "head_features": list(model.classifier.in_features),
        "backbone_kwargs": spec.backbone_kwargs,
        "head_kwargs": spec.head_kwargs,
        "labels": list(recipe.labels) if recipe.labels else None,
        "preprocessing": recipe.preprocessing,
        "providers": model.config["providers"],
        "weights": {
            tag: {
                "default": tag == recipe.default_tag,
                **{k: v for k, v in asdict(ws).items() if k != "labels"},
            }
            for tag, ws in recipe.weights.items()
        },
    }


def _params_with_aux(spec: BuildSpec, model: SegmentationModel) -> int | None:
    """Parameter count with the auxiliary head (torchvision's published counts include it);
    None where the backbone has no feature for one."""
    if spec.aux:
        return sum(p.numel() for p in model.parameters())
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(replace(spec, aux=True)).parameters())
    except ValueError:
        return None
