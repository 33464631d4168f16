"""Checkpoints of other libraries -> segzoo folders. Reads PyTorch files with weights_only=True only."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ._build import build_model, resolve_spec
from ._folder import folder_config, write_folder
from ._loading import aligned, load_state, no_init
from ._plugins import registry
from ._sniff import torch_checkpoint_problem
from .errors import UnsafeCheckpointError, UsageError, WeightsError
from .hookspecs import hookimpl

__all__ = ["convert_torchvision", "load_torch_checkpoint"]


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a PyTorch checkpoint, read with ``torch.load(weights_only=True)``: never
    unpickles arbitrary objects. Accepts a bare state dict or the torchvision references' training
    checkpoints (``{"model": state_dict, ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    problem = torch_checkpoint_problem(path)
    if problem is not None:
        raise WeightsError(
            f"{path} is {problem}, not a PyTorch checkpoint (a .pth file written by torch.save)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds more than tensors (weights_only loading said: "
            f"{str(err).splitlines()[0]}). segzoo never unpickles arbitrary code; if you trust the file, "
            "load it yourself and save its state_dict with torch.save(model.state_dict(), ...)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(f"{path} does not hold a state dict (a dict of name -> tensor)")
    return aligned(obj)


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)  # mmap only works for the zip format of torch.save


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _infer_head(recipe: str, state_dict: dict[str, torch.Tensor]) -> tuple[int, bool]:
    """num_classes and aux of a checkpoint for a recipe: the tensors whose shape follows
    num_classes are found by building the recipe twice on the meta device."""
    with torch.device("meta"), no_init():
        a = build_model(resolve_spec(recipe, num_classes=2, aux=True)).state_dict()
        b = build_model(resolve_spec(recipe, num_classes=3, aux=True)).state_dict()
    per_class = [k for k in a if a[k].shape != b[k].shape and k in state_dict]
    if not per_class:
        raise WeightsError(
            f"this checkpoint has none of the classifier tensors of {recipe}; is it a {recipe} checkpoint?"
        )
    aux = any(k.startswith("aux_classifier.") for k in state_dict)
    return int(state_dict[per_class[-1]].shape[0]), aux


def convert_state_dict_file(
    recipe: str,
    checkpoint: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    weights_meta: dict[str, Any] | None = None,
    spec: Any = None,
    overwrite: bool = False,
) -> Path:
    """A torchvision-format checkpoint of ``recipe`` -> a segzoo folder at ``outdir``."""
    state_dict = load_torch_checkpoint(checkpoint)
    num_classes, aux = _infer_head(recipe, state_dict)
    build = resolve_spec(recipe, num_classes=num_classes, aux=aux)
    if spec is not None and spec.num_classes == num_classes:
        build.labels = list(spec.labels) if spec.labels else build.labels
        build.preprocessing = dict(spec.preprocessing or build.preprocessing)
    with torch.device("meta"), no_init():
        model = build_model(build)
    load_state(model, state_dict, source=str(checkpoint))  # every key and shape must fit
    config = folder_config(model.config)
    if weights_meta:
        config["weights"] = weights_meta
    return write_folder(outdir, model.state_dict(), config, overwrite=overwrite)


def convert_torchvision(
    name: str, checkpoint: str | os.PathLike, outdir: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """A torchvision segmentation checkpoint (``.pth``) -> a segzoo folder (safetensors, config,
    card). When the file is one of torchvision's published checkpoints (its sha256 matches a
    weight tag of the recipe), the card carries torchvision's metrics, labels and licence."""
    recipe = registry().get("model", name).obj
    checkpoint = Path(checkpoint)
    digest = _sha256(checkpoint)
    spec, meta = None, {"source": f"torchvision checkpoint {checkpoint.name}", "sha256": digest}
    for tag, ws in recipe.weights.items():
        if ws.url and ws.sha256 and digest.startswith(ws.sha256.lower()):
            spec, meta = ws, {**ws.card_metadata(tag), "sha256": digest}
            break
    return convert_state_dict_file(
        name, checkpoint, outdir, weights_meta=meta, spec=spec, overwrite=overwrite
    )


def torchvision_converter(
    name: str, checkpoint: str, *, outdir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """``segzoo convert torchvision RECIPE CHECKPOINT OUTDIR``."""
    return convert_torchvision(name, checkpoint, outdir, overwrite=overwrite)


@hookimpl
def register_converters(register):
    register(
        "torchvision",
        torchvision_converter,
        description="a torchvision segmentation checkpoint (.pth): RECIPE CHECKPOINT",
    )
