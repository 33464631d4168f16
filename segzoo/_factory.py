"""create(): a name -> a recipe, a saved folder or a Hub repo -> a built SegmentationModel."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._build import (
    BuildSpec,
    apply_overrides,
    build_model,
    build_with_weights,
    resolve_spec,
    spec_from_config,
)
from ._config import read_config
from ._folder import WEIGHTS_NAME
from ._names import parse_model_name
from ._plugins import registry
from ._registry import Recipe, WeightSpec, filter_names, unknown_name_message
from ._weights import fetch_weights
from .errors import UnknownNameError, UsageError
from .hub import download_folder
from .model import SegmentationModel


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
    parsed = parse_model_name(name) if name is not None else None
    if parsed is not None and parsed.scheme is not None:
        if backbone is not None or head is not None or pretrained_backbone:
            raise UsageError(
                f"create({name!r}) rebuilds the saved model; backbone=, head= and pretrained_backbone= "
                "do not apply"
            )
        folder = (
            Path(parsed.path).expanduser()
            if parsed.scheme == "local-dir"
            else download_folder(parsed.repo_id, parsed.revision, token=token)  # type: ignore[arg-type]
        )
        return load_folder(folder, ignore_mismatched=ignore_mismatched, **overrides)

    spec = resolve_spec(parsed.name if parsed else None, backbone=backbone, head=head, **overrides)
    spec.pretrained_backbone = pretrained_backbone
    tag = parsed.tag if parsed else None
    if tag is None and not pretrained:
        return build_model(spec)
    if pretrained and pretrained_backbone:
        raise UsageError("pretrained=True loads the whole model; drop pretrained_backbone=True")
    recipe, tag = _weight_tag(spec, tag)
    # A tag describes a model (classes, aux head, labels, preprocessing) even without its weights,
    # as in timm; pretrained=True loads them too.
    ws = recipe.weights[tag]
    spec = _apply_tag(spec, ws, num_classes=num_classes, aux=aux)
    if not pretrained:
        return build_model(spec)
    folder = fetch_weights(recipe.name, tag, ws, token=token)
    model = _load_weights(spec, folder, read_config(folder), ignore_mismatched)
    model.config["weights"] = ws.card_metadata(tag)
    return model


def _weight_tag(spec: BuildSpec, tag: str | None) -> tuple[Recipe, str]:
    """The recipe and weight tag to use (its default tag when none is given)."""
    recipe = registry().get("model", spec.recipe).obj if spec.recipe else None
    if recipe is None or not recipe.weights:
        raise UsageError(
            f"{spec.recipe or spec.head} has no pretrained weights: use pretrained=False, "
            f"or a recipe from segzoo.list_models(pretrained=True)"
        )
    tag = tag or recipe.default_tag
    if tag not in recipe.weights:
        raise UnknownNameError(
            unknown_name_message(
                "weight tag", f"{recipe.name}.{tag}", [f"{recipe.name}.{t}" for t in recipe.weights]
            )
        )
    return recipe, tag


def _apply_tag(spec: BuildSpec, ws: WeightSpec, *, num_classes: int | None, aux: bool | None) -> BuildSpec:
    """The spec of a weight tag: its classes, aux head, labels and preprocessing unless overridden."""
    n_cls = num_classes if num_classes is not None else ws.num_classes
    return replace(
        spec,
        num_classes=n_cls,
        aux=aux if aux is not None else ws.aux,
        labels=list(ws.labels) if ws.labels and n_cls == ws.num_classes else spec.labels,
        preprocessing=dict(ws.preprocessing) if ws.preprocessing else spec.preprocessing,
    )


def _load_weights(
    spec: BuildSpec, folder: Path, cfg: dict[str, Any], ignore_mismatched: bool
) -> SegmentationModel:
    return build_with_weights(
        spec, folder / WEIGHTS_NAME, save_id=cfg.get("save_id"), ignore_mismatched=ignore_mismatched
    )


def load_folder(
    folder: str | os.PathLike, *, ignore_mismatched: bool = False, **overrides: Any
) -> SegmentationModel:
    """Rebuild a model from a segzoo folder: config.json validated, then model.safetensors loaded."""
    folder = Path(folder)
    cfg = read_config(folder)
    spec = apply_overrides(spec_from_config(cfg, folder / "config.json"), **overrides)
    model = _load_weights(spec, folder, cfg, ignore_mismatched)
    if cfg.get("weights"):
        model.config["weights"] = cfg["weights"]
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


def model_info(name: str, *, token: str | None = None) -> dict[str, Any]:
    """What a recipe, a saved folder (``local-dir:``) or a Hub repo (``hf-hub:``) builds: parameter
    count, features, defaults and the plugins providing its parts.

    The model is built on the meta device, so this allocates no weights.
    """
    parsed = parse_model_name(name)
    if parsed.scheme is not None:
        folder = (
            Path(parsed.path).expanduser()  # type: ignore[arg-type]
            if parsed.scheme == "local-dir"
            else download_folder(parsed.repo_id, parsed.revision, token=token)  # type: ignore[arg-type]
        )
        cfg = read_config(folder)
        spec = spec_from_config(cfg, folder / "config.json")
        head = {
            "name": name,
            "description": f"a saved model: {spec.head} on {spec.backbone}",
            "provider": None,
            "recipe": spec.recipe,
        }
        weights: dict[str, Any] = {"saved": cfg.get("weights") or {}}
    else:
        entry = registry().get("model", parsed.name)
        recipe: Recipe = entry.obj
        spec = resolve_spec(parsed.name)
        head = {"name": parsed.name, "description": recipe.description, "provider": entry.provider()}
        weights = {
            tag: {
                "default": tag == recipe.default_tag,
                **{k: v for k, v in asdict(ws).items() if k != "labels"},
            }
            for tag, ws in recipe.weights.items()
        }
    with torch.device("meta"):
        model = build_model(spec)
    return {
        **head,
        "backbone": spec.backbone,
        "head": spec.head,
        "aux": spec.aux,
        "aux_head": spec.aux_head,
        "num_classes": spec.num_classes,
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_params_with_aux": _params_with_aux(spec, model),
        "features": model.backbone.feature_info.to_list(),
        "head_features": list(model.classifier.in_features),
        "backbone_kwargs": spec.backbone_kwargs,
        "head_kwargs": spec.head_kwargs,
        "labels": spec.labels,
        "preprocessing": spec.preprocessing,
        "providers": model.config["providers"],
        "weights": weights,
    }


def _params_with_aux(spec: BuildSpec, model: SegmentationModel) -> int | None:
    """Parameter count with the auxiliary head (torchvision's published counts include it);
    None where the backbone has no feature for one."""
    if spec.aux:
        return sum(p.numel() for p in model.parameters())
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(replace(spec, aux=True)).parameters())
    except UsageError:
        return None
