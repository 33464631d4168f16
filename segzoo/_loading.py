"""Loading weights into a model built on the meta device: checks, assign, re-initialisation."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from ._warn import warn
from .errors import WeightsError

_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip
_init_lock = threading.Lock()


# oneDNN picks its kernels by the alignment of a tensor's memory as well as by the CPU, so a tensor
# memory-mapped at an odd offset of a safetensors file can give results that differ in the last
# bit from the same values in memory from torch's allocator (which aligns to 64 bytes).
ALIGNMENT = 64


def aligned(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, with each one that is not 64-byte aligned copied into memory that is."""
    return {k: v.clone() if v.numel() and v.data_ptr() % ALIGNMENT else v for k, v in tensors.items()}


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
        raise WeightsError(f"{source} lacks tensor(s) the model needs: {_preview(hard_missing)}")
    if hard_unexpected:
        raise WeightsError(f"{source} has tensor(s) this model does not have: {_preview(hard_unexpected)}")
    if mismatched and not ignore_mismatched:
        detail = ", ".join(
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:4]
        )
        raise WeightsError(
            f"{source} does not fit the model: {detail}{' ...' if len(mismatched) > 4 else ''} "
            "(checkpoint vs model). A different num_classes? Pass ignore_mismatched=True to "
            "initialise those layers afresh, e.g. for fine-tuning."
        )
    kept = _checked_dtypes(
        {k: v for k, v in state_dict.items() if k in expected and k not in mismatched}, expected, source
    )
    model.load_state_dict(kept, strict=False, assign=True)
    fresh = missing + mismatched
    materialize(model)
    if mismatched:
        warn(
            f"re-initialised {len(mismatched)} tensor(s) whose shape differs from {source}: {_preview(mismatched)}"
        )
    return fresh


def _checked_dtypes(
    state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Cast floating-point tensors to the model's dtype (fp16/bf16 checkpoints load, with a warning);
    refuse integer tensors where the model has floats and non-finite values, by name."""
    wrong_kind = [
        k for k, v in state_dict.items() if v.dtype.is_floating_point != expected[k].dtype.is_floating_point
    ]
    if wrong_kind:
        detail = ", ".join(f"{k} ({state_dict[k].dtype} vs {expected[k].dtype})" for k in wrong_kind[:4])
        raise WeightsError(
            f"{source} has tensor(s) of the wrong kind: {detail}{' ...' if len(wrong_kind) > 4 else ''} "
            "(checkpoint vs model); it was not saved from this architecture"
        )
    not_finite = [k for k, v in state_dict.items() if v.dtype.is_floating_point and not _finite(v)]
    if not_finite:
        raise WeightsError(
            f"{source} has NaN or infinite values in {_preview(not_finite)}: the weights are broken "
            "(a diverged training run?) and would predict garbage; re-export them from a good checkpoint"
        )
    cast = {k: v for k, v in state_dict.items() if v.dtype != expected[k].dtype}
    if cast:
        dtypes = sorted({str(v.dtype).replace("torch.", "") for v in cast.values()})
        warn(
            f"{source}: cast {len(cast)} {'/'.join(dtypes)} tensor(s) to the model's dtype "
            f"({str(next(expected[k] for k in cast).dtype).replace('torch.', '')})"
        )
        state_dict = {**state_dict, **{k: v.to(expected[k].dtype) for k, v in cast.items()}}
    return state_dict


def _finite(t: torch.Tensor) -> bool:
    """Whether every value is finite. A NaN or infinity anywhere makes the sum non-finite, so one
    summing pass (no boolean copy of the weights) settles the common case; only a non-finite sum,
    which an overflow could also cause, is checked value by value."""
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


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
