"""Loading weights into a model built on the meta device: checks, assign, re-initialisation."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip
_init_lock = threading.Lock()


class WeightsMismatchError(ValueError):
    """A state dict that does not fit the model it is loaded into."""


class NeedsRealBuild(RuntimeError):
    """A tensor left on the meta device that re-initialisation cannot fill (e.g. a non-persistent
    buffer computed in __init__): the caller must build the model for real instead."""


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Skip torch.nn.init while building a model whose weights are all loaded next, as transformers'
    ``no_init_weights`` does: on the meta device the init functions run through slow Python
    decompositions (half of a ResNet-101's build time) and their results are thrown away."""

    def skip(tensor, *args, **kwargs):
        return tensor

    with _init_lock:
        saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
        try:
            for name in saved:
                setattr(nn.init, name, skip)
            yield
        finally:
            for name, fn in saved.items():
                setattr(nn.init, name, fn)


def _preview(keys: Iterable[str], n: int = 6) -> str:
    keys = list(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    ignore_mismatched: bool = False,
    optional_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """Load ``state_dict`` into ``model`` (built on the meta device or not) with ``assign=True``.

    Keys under ``optional_prefixes`` (the auxiliary head) may be missing, in which case those
    layers are initialised, or unexpected, in which case they are dropped. Shape mismatches are an
    error unless ``ignore_mismatched``: then those layers are initialised afresh. Returns the keys
    that were initialised rather than loaded. The model is only touched once every check passed.
    """
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    hard_missing = [k for k in missing if not k.startswith(optional_prefixes)]
    hard_unexpected = [k for k in unexpected if not k.startswith(optional_prefixes)]
    if hard_missing:
        raise WeightsMismatchError(f"{source} lacks tensor(s) the model needs: {_preview(hard_missing)}")
    if hard_unexpected:
        raise WeightsMismatchError(
            f"{source} has tensor(s) this model does not have: {_preview(hard_unexpected)}"
        )
    if mismatched and not ignore_mismatched:
        detail = ", ".join(
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:4]
        )
        raise WeightsMismatchError(
            f"{source} does not fit the model: {detail}{' ...' if len(mismatched) > 4 else ''} "
            "(checkpoint vs model). A different num_classes? Pass ignore_mismatched=True to "
            "initialise those layers afresh, e.g. for fine-tuning."
        )
    model.load_state_dict(
        {k: v for k, v in state_dict.items() if k in expected and k not in mismatched},
        strict=False,
        assign=True,
    )
    fresh = missing + mismatched
    materialize(model)
    if mismatched:
        warnings.warn(
            f"re-initialised {len(mismatched)} tensor(s) whose shape differs from {source}: {_preview(mismatched)}",
            UserWarning,
            stacklevel=3,
        )
    return fresh


def materialize(model: nn.Module, device: torch.device | str = "cpu") -> None:
    """Give every module that still has meta tensors real storage and its default init."""
    for module in model.modules():
        direct = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if not any(t.is_meta for t in direct):
            continue
        if not hasattr(module, "reset_parameters"):
            raise NeedsRealBuild(type(module).__name__)
        module.to_empty(device=device, recurse=False)
        module.reset_parameters()
