"""Build a timm architecture as a segzoo backbone and run every head on it: the measurements
behind ``timm_matrix.json`` (``benchmarks/backbone_matrix.py``) and its sample test.

Tier "meta" runs on the meta device (shapes only); tier "real" runs a forward in train and eval
mode and a backward for real at a small size; tier "export" runs ``torch.export`` with one head.
Each result is "ok" or the error, one line.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

from .._factory import create
from .dilation import NotDilatableError, shape_forward
from .timm import timm_backbone

SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
ERR_CHARS = 160


def error_text(e: BaseException) -> str:
    """An exception as one short line."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}"[:ERR_CHARS]


# -- worker: runs in its own process -----------------------------------------------------------


def _size_for(bb: Any, minimum: int) -> tuple[int, int]:
    rule = bb.input_rule()
    if "fixed" in rule:
        return tuple(rule["fixed"])  # type: ignore[return-value]
    m = rule.get("multiple", 1)
    s = -(-max(minimum, 32) // m) * m
    return (s, s)


def _min_size(bb: Any) -> int | None:
    """The smallest square input of SIZES the backbone takes (its own rule first)."""
    rule = bb.input_rule()
    if "fixed" in rule:
        return int(min(rule["fixed"]))
    m = rule.get("multiple", 1)
    for s in SIZES:
        if s % m:
            continue
        try:
            shape_forward(bb, (s, s))
            return s
        except Exception:
            continue
    return None


_FEATURES: dict[tuple[int, tuple[int, int]], Any] = {}


def meta_features(bb: Any, size: tuple[int, int]) -> Any:
    """The backbone's features for one image of ``size`` as meta tensors (for heads built on
    meta), computed once for all heads."""
    import torch

    key = (id(bb), size)
    if key not in _FEATURES:
        _FEATURES.clear()
        feats = shape_forward(bb, size)
        _FEATURES[key] = (bb, {k: torch.empty_like(v, device="meta") for k, v in feats.items()})
    return _FEATURES[key][1]


def run_head(bb: Any, head: str, size: tuple[int, int], real: bool) -> str:
    """Build the head on the backbone and run it: for real, a forward in train mode, a backward
    and a forward in eval mode; on the meta device an eval-mode forward (shapes only: timm's
    train-mode BatchNorm on meta runs through slow Python decompositions)."""
    import torch

    try:
        if real:
            model = create(head, backbone=bb, num_classes=3)
        else:
            with torch.device("meta"):
                model = create(head, backbone=bb, num_classes=3)
    except Exception as e:
        return "build: " + error_text(e)
    stage = "train"
    try:
        if real:
            model.train()
            x = torch.rand(2, 3, *size)
            out = model(x)["out"]
            if tuple(out.shape) != (2, 3, *size):
                return f"train: output shape {tuple(out.shape)}"
            stage = "backward"
            out.mean().backward()
        stage = "eval"
        model.eval()
        with torch.no_grad():
            if real:
                out = model(torch.rand(1, 3, *size))["out"]
            else:  # the backbone's meta features are computed once for all heads
                out = model._predict(model.classifier, meta_features(bb, size), size)
        if tuple(out.shape) != (1, 3, *size):
            return f"eval: output shape {tuple(out.shape)}"
        if real and not torch.isfinite(out).all():
            return "eval: non-finite output"
    except Exception as e:
        return f"{stage}: " + error_text(e)
    finally:
        for p in bb.parameters():
            p.grad = None
    return "ok"


def _meta_backbone(name: str, device: str = "meta", **kwargs: Any) -> tuple[Any, str]:
    """The backbone on the meta device, or on the CPU when its forward reads values (Tensor.item()
    on a tensor attribute, which no probe on the meta device can run), and where it was built;
    ``device="cpu"`` when an earlier build of the same architecture found that out."""
    import torch

    if device == "meta":
        try:
            with torch.device("meta"):
                return timm_backbone(name, **kwargs), "meta"
        except Exception as e:
            if "meta tensors" not in str(e):
                raise
    return timm_backbone(name, **kwargs), "cpu"


def work_meta(name: str, heads: list[str], full: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    t = time.perf_counter()
    if full:
        try:
            bb, device = _meta_backbone(name)
        except Exception as e:
            return {"error": error_text(e), "s": round(time.perf_counter() - t, 2)}
        if device != "meta":
            rec["device"] = device
        info = bb.feature_info
        rec["params"] = sum(p.numel() for p in bb.parameters())
        rec["features"] = [[f.channels, f.reduction] for f in info]
        roles = {}
        for role in ("out", "aux", "low"):
            try:
                roles[role] = info.names().index(info.resolve(role).name)
            except Exception:
                roles[role] = None
        rec["roles"] = roles
        rec["input"] = bb.input_rule()
        rec["min_size"] = _min_size(bb)
        rec["os"] = {}
        for os_ in (16, 8):
            if max(info.reductions()) <= os_:
                rec["os"][str(os_)] = "as built"
                continue
            try:
                d, _ = _meta_backbone(name, device, output_stride=os_)
                rec["os"][str(os_)] = d.dilation
            except NotDilatableError as e:
                rec["os"][str(os_)] = f"not dilatable: {e.reason}"[:ERR_CHARS]
            except Exception as e:
                rec["os"][str(os_)] = error_text(e)
    else:
        bb, _ = _meta_backbone(name)
    size = _size_for(bb, max(64, rec.get("min_size") or _min_size(bb) or 64))
    rec["heads"] = {}
    for h in heads:
        rec["heads"][h] = run_head(bb, h, size, real=False)
    rec["s"] = round(time.perf_counter() - t, 2)
    return rec


def work_real(name: str, heads: list[str], full: bool) -> dict[str, Any]:

    t = time.perf_counter()
    try:
        bb = timm_backbone(name)
    except Exception as e:
        return {"error": error_text(e), "s": round(time.perf_counter() - t, 2)}
    size = _size_for(bb, max(64, _min_size(bb) or 64))
    rec: dict[str, Any] = {"size": size[0] if size[0] == size[1] else list(size), "heads": {}}
    for h in heads:
        rec["heads"][h] = run_head(bb, h, size, real=True)
    del bb
    rec["s"] = round(time.perf_counter() - t, 2)
    return rec


EXPORT_SECONDS = 150.0  # per attempt: a few window transformers take minutes in the shape solver


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in this (the main) thread after ``seconds``: torch.export traces in
    Python, so the alarm interrupts it, and the worker goes on with the next attempt."""

    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"more than {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _exports_and_matches(wrapper: Any, constraint: Any, stride: int, check: tuple[int, int]) -> str:
    """One ``torch.export`` under ``constraint``, its program run at ``check`` against eager."""
    import torch

    from ..export import _try_export

    with _time_limit(EXPORT_SECONDS):
        ep = _try_export(wrapper, constraint, stride)
    if ep is None:
        return "no"
    x = torch.rand(1, 3, *check)
    with torch.no_grad():
        want, got = wrapper(x), ep.module()(x)
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    return "ok" if err <= 1e-4 else f"differs from eager at {check[0]}x{check[1]} (rel. error {err:.1e})"


def work_export(name: str, heads: list[str], full: bool) -> dict[str, Any]:
    """``torch.export`` of the backbone with ``heads[0]`` in eval mode: at the tier-real size
    (static), then with dynamic height and width (any size, else multiples of the backbone's
    input multiple or largest stride); each program is run once and compared with eager."""
    from ..export import SizeConstraint, _max_reduction, _Outputs, _round_up

    t = time.perf_counter()
    head = heads[0]
    try:
        bb = timm_backbone(name)
        model = create(head, backbone=bb, num_classes=3)
    except Exception as e:
        return {"head": head, "error": "build: " + error_text(e), "s": round(time.perf_counter() - t, 2)}
    rule = bb.input_rule()
    size = _size_for(bb, max(64, _min_size(bb) or 64))
    wrapper = _Outputs(model, False).eval()
    stride = _max_reduction(model)
    rec: dict[str, Any] = {"head": head}
    try:
        static = SizeConstraint(1, min(size), max(size), size)
        rec["static"] = _exports_and_matches(wrapper, static, stride, size)
    except Exception as e:
        rec["static"] = error_text(e)
    if "fixed" in rule:
        rec["dynamic"] = "no: the backbone takes one input size"
    else:
        rec["dynamic"] = "no"
        for m in dict.fromkeys((rule.get("multiple", 1), stride)):
            c = SizeConstraint(m, _round_up(max(2 * stride, min(size)), m), None)
            h, w = c.example(stride)
            try:
                got = _exports_and_matches(wrapper, c, stride, (h + m, w))
            except Exception as e:
                rec["dynamic"] = error_text(e)
                break
            if got != "no":
                rec["dynamic"] = ("any size" if m == 1 else f"multiples of {m}") if got == "ok" else got
                break
    rec["s"] = round(time.perf_counter() - t, 2)
    return rec
