"""Output stride 8 or 16 for any convolutional backbone, by dilation.

torchvision's ``replace_stride_with_dilation`` and timm's ``output_stride`` do this per family,
inside each model's constructor. This does it after construction, for any module: one forward on
the meta device measures the reduction at the input of every convolution and pooling layer; a
layer whose output would be coarser than the output stride loses its stride, and every layer that
now runs on a finer grid than it was built for gets its dilation multiplied by the ratio (the
convention of torchvision and timm: the layer that used to stride keeps the dilation of its input,
the layers after it get the new one). Padding follows so that sizes stay "same". Parameter names
and shapes do not change, so pretrained weights load as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UsageError

__all__ = ["NotDilatableError", "dilate", "shape_forward"]

OUTPUT_STRIDES = (8, 16, 32)


class NotDilatableError(UsageError):
    """A backbone whose output stride cannot be lowered by dilation (e.g. a patch embedding);
    ``reason`` says what stood in the way."""

    reason: str = ""


@dataclass
class _Seen:
    in_size: tuple[int, int]
    out_size: tuple[int, int]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


# Models up to this many parameters and buffers are probed for real on the CPU: torch's meta
# kernels for BatchNorm and friends are Python decompositions, slower than a small real forward.
REAL_PROBE_NUMEL = 50_000_000
# A model on the meta device whose forward reads values runs once with zero weights up to this
# size (4 GB of float32); a bigger one cannot be measured without its memory.
ZEROS_PROBE_NUMEL = 1_000_000_000


def shape_forward(module: nn.Module, size: tuple[int, int]) -> Any:
    """One eval-mode forward of a zero image of ``size`` (no grad), for the output shapes.

    A small module runs for real on its device (zero weights stand in where it lives on the meta
    device); a big one runs on the meta device, which needs no memory.
    """
    from torch.func import functional_call

    named = list(itertools.chain(module.named_parameters(), module.named_buffers()))
    on_meta = any(v.is_meta for _, v in named)
    device = named[0][1].device if named and not on_meta else torch.device("cpu")
    numel = sum(v.numel() for _, v in named)

    def with_values() -> Any:
        # the module's own weights, or zeros standing in for weights on the meta device
        if not on_meta:
            return module(torch.zeros(1, 3, *size, device=device))
        zeros = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in named}
        return functional_call(module, zeros, (torch.zeros(1, 3, *size),))

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if numel <= REAL_PROBE_NUMEL:
                try:
                    return with_values()
                except Exception:
                    if not on_meta:
                        raise
                    # e.g. a plain tensor attribute on the meta device: probe on meta
            tensors = {k: torch.empty_like(v, device="meta") for k, v in named}
            try:
                return functional_call(module, tensors, (torch.empty(1, 3, *size, device="meta"),))
            except (NotImplementedError, RuntimeError) as err:
                # an op without a meta kernel, or one that reads values (gemma4's Tensor.item()):
                # run with values; a shape error is the answer, not a reason
                if not isinstance(err, NotImplementedError) and "meta" not in str(err):
                    raise
                if on_meta and numel > ZEROS_PROBE_NUMEL:
                    raise
                return with_values()
    finally:
        module.train(was_training)


def _measure(module: nn.Module, size: tuple[int, int], layers: dict[str, nn.Module]) -> dict[str, _Seen]:
    """Input and output spatial sizes of each layer in ``layers`` for one input of ``size``."""
    seen: dict[str, _Seen] = {}
    twice: list[str] = []

    def hook(name: str, _m: nn.Module, args: tuple, out: Tensor) -> None:
        s = _Seen(tuple(args[0].shape[-2:]), tuple(out.shape[-2:]))
        if name in seen and seen[name] != s:
            twice.append(name)
        seen[name] = s

    handles = [m.register_forward_hook(lambda m, a, o, n=n: hook(n, m, a, o)) for n, m in layers.items()]
    try:
        shape_forward(module, size)
    finally:
        for h in handles:
            h.remove()
    if twice:
        raise NotDilatableError(f"layers {twice[:3]} run at more than one resolution")
    return seen


def _same_like(seen: _Seen, stride: tuple[int, int]) -> bool:
    """Whether the layer keeps ``ceil(size / stride)``: its padding is 'same', which is kept."""
    return all(-(-i // s) == o for i, o, s in zip(seen.in_size, seen.out_size, stride, strict=True))


def dilate(
    module: nn.Module,
    output_stride: int,
    *,
    probe_size: tuple[int, int] = (256, 256),
    check: Callable[[], None] | None = None,
) -> list[str]:
    """Change ``module`` in place so that no layer reduces the input by more than ``output_stride``.

    Returns the names of the layers changed. Raises :class:`NotDilatableError` where a stride
    cannot be traded for dilation (a patch embedding that strides past the output stride at once,
    a layer run at two resolutions, a stride applied outside a Conv2d / pooling module; ``check``
    is called afterwards to verify the new strides and may raise it too).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise UsageError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    layers = {
        n: m
        for n, m in module.named_modules()
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and n
    }
    seen = _measure(module, probe_size, layers)
    changed = []
    for name, m in layers.items():
        s = seen.get(name)
        if s is None:
            continue  # not on the path to the features
        r_in = tuple(max(1, round(p / i)) for p, i in zip(probe_size, s.in_size, strict=True))
        stride = _pair(m.stride)
        new_in = tuple(min(r, output_stride) for r in r_in)
        factor = tuple(r // n for r, n in zip(r_in, new_in, strict=True))
        new_out = tuple(min(r * st, output_stride) for r, st in zip(r_in, stride, strict=True))
        new_stride = tuple(o // n for o, n in zip(new_out, new_in, strict=True))
        if new_stride == stride and (factor == (1, 1) or isinstance(m, nn.AvgPool2d)):
            continue  # torch has no dilated average pooling: it keeps its (smaller) window
        if any(ns not in (1, st) for ns, st in zip(new_stride, stride, strict=True)):
            raise NotDilatableError(
                f"layer {name!r} strides by {stride[0]} at once (a patch embedding), past output stride "
                f"{output_stride}"
            )
        same = _same_like(s, stride)
        if isinstance(m, nn.Conv2d):
            _dilate_conv(m, new_stride, factor, same)
        else:
            _replace_pool(module, name, m, new_stride, factor, same)
        changed.append(name)
    if check is not None:
        check()
    return changed


def _dilate_conv(m: nn.Conv2d, stride: tuple[int, int], factor: tuple[int, int], same: bool) -> None:
    kernel = _pair(m.kernel_size)
    dilation = tuple(d * f if k > 1 else d for d, f, k in zip(_pair(m.dilation), factor, kernel, strict=True))
    m.stride, m.dilation = stride, dilation
    # timm's "Same" convolutions pad in forward from stride and dilation; nothing else to do
    if getattr(m, "same_pad", False) or type(m).__name__ in ("Conv2dSame", "Conv2dSameExport"):
        return
    if isinstance(m.padding, str):
        return  # "same" or "valid": F.conv2d applies it with the new dilation
    if same and stride == (1, 1):
        span = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        # an even span (odd kernel) pads symmetrically; an odd one needs PyTorch's "same"
        m.padding = tuple(sp // 2 for sp in span) if all(sp % 2 == 0 for sp in span) else "same"
    else:
        m.padding = tuple(p * f for p, f in zip(_pair(m.padding), factor, strict=True))
    if m.padding_mode != "zeros" and not isinstance(m.padding, str):
        m._reversed_padding_repeated_twice = [p for p in reversed(m.padding) for _ in range(2)]


def _replace_pool(
    root: nn.Module, name: str, m: nn.Module, stride: tuple[int, int], factor: tuple[int, int], same: bool
) -> None:
    """Pooling has no parameters, so the module itself is replaced: by timm's dynamically padded
    pools, which keep the size at stride 1 for any kernel (torch's own pad only symmetrically)."""
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    kernel = _pair(m.kernel_size)
    if not same:
        raise NotDilatableError(f"pooling layer {name!r} has no 'same' padding")
    if isinstance(m, nn.MaxPool2d):
        dilation = tuple(d * f for d, f in zip(_pair(m.dilation), factor, strict=True))
        new: nn.Module = MaxPool2dSame(kernel, stride, dilation=dilation, ceil_mode=m.ceil_mode)
    else:
        new = AvgPool2dSame(kernel, stride, ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)
