"""The plugin hooks of segzoo (pluggy project ``segzoo``).

Every hook receives a ``register`` callback; a plugin calls it once per thing it adds. Built-in
backbones, heads and recipes are registered through these same hooks.
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("segzoo")
hookimpl = pluggy.HookimplMarker("segzoo")


class RegisterBuilder(Protocol):
    def __call__(self, name: str, builder: Any, *, description: str = "") -> None: ...


class RegisterModel(Protocol):
    def __call__(self, name: str, **recipe: Any) -> None: ...


@hookspec
def register_backbones(register: RegisterBuilder) -> None:
    """Add backbones: ``register(name, builder, description=...)``.

    ``builder(**kwargs)`` returns an ``nn.Module`` whose forward gives an ordered
    ``dict[str, Tensor]`` and which has ``feature_info`` (a ``segzoo.FeatureExtractor`` does).
    A name ending in ``:*`` registers a family: ``"timm:*"`` serves ``"timm:resnet50"`` and
    its builder gets the part after the colon as its first argument.
    """


@hookspec
def register_heads(register: RegisterBuilder) -> None:
    """Add heads: ``register(name, builder, description=...)``.

    ``builder(feature_info, num_classes, **kwargs)`` returns an ``nn.Module`` with an
    ``in_features`` tuple of feature names; its forward takes those features, in that order, and
    returns ``N x num_classes x h x w`` logits.
    """


@hookspec
def register_converters(register: RegisterBuilder) -> None:
    """Add checkpoint converters: ``register(name, converter, description=...)``.

    ``converter(*inputs, outdir, overwrite=False)`` reads another library's checkpoint and writes a
    segzoo folder at ``outdir``, returning its path; ``segzoo convert NAME INPUT... OUTDIR`` calls
    it. An input written ``hf-hub:ORG/REPO[@REV]`` reaches the converter as the local folder holding
    that repo's ``config.json`` and ``model.safetensors``.
    """


@hookspec
def register_models(register: RegisterModel) -> None:
    """Add model recipes: ``register(name, backbone=..., head=..., **fields)``.

    The fields of a recipe: ``num_classes``, ``aux``,
    ``aux_head``, ``backbone_kwargs``, ``head_kwargs``, ``aux_head_kwargs``, ``labels``,
    ``preprocessing``, ``description`` and ``weights``.
    """
