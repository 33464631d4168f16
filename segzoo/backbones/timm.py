"""Any timm model as a backbone: ``"timm:<model name>"`` through timm's ``features_only``.

At build time the backbone learns which input sizes it takes (one forward on the meta device
per size tried): transformers get timm's ``dynamic_img_size`` where they support it; a model that
still needs one size, or a multiple, records it (``input_size``, ``input_multiple``) and refuses
other inputs with a clear error instead of a shape mismatch deep inside. ``output_stride`` 8 or 16
uses timm's own dilation where the family has it and :func:`segzoo.backbones.dilation.dilate`
otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .._registry import unknown_name_message
from ..errors import UnknownNameError, UsageError
from ..hookspecs import hookimpl
from .dilation import NotDilatableError, dilate, shape_forward
from .extractor import Feature, FeatureExtractor

__all__ = ["ALLOWED_TIMM_KWARGS", "TimmBackbone", "timm_backbone"]

# timm keywords that only shape the architecture (all JSON scalars), so a config.json may carry
# them. Anything else is refused: timm.create_model also takes keywords that read files or URLs.
ALLOWED_TIMM_KWARGS: dict[str, type | tuple[type, ...]] = {
    "drop_rate": (int, float),
    "drop_path_rate": (int, float),
    "drop_block_rate": (int, float),
    "attn_drop_rate": (int, float),
    "proj_drop_rate": (int, float),
    "pos_drop_rate": (int, float),
    "img_size": (int, list, tuple),
    "dynamic_img_size": bool,
    "dynamic_img_pad": bool,
}
# Keywords refused with their reason (the rest of the unknown ones get the allow-list).
_LOADING_KWARGS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained")
_SEGZOO_SETS = ("features_only", "feature_cls", "feature_cfg", "in_chans", "num_classes", "global_pool")

# Input sizes tried at build time: any size, then a multiple of the model's stride.
_ODD_SIZE = (100, 132)
_PROBE_SIZE = (160, 224)


class TimmBackbone(FeatureExtractor):
    """A timm ``features_only`` model returning NCHW features, with the input sizes it takes.

    ``input_size`` is None or the one (H, W) the model takes; ``input_multiple`` is what H and W
    must be multiples of (1: any). ``output_stride`` is the coarsest feature's reduction and
    ``dilation`` says how it was reached: None, ``"timm"`` or ``"segzoo"`` (generic dilation).
    """

    timm_name: str
    input_size: tuple[int, int] | None
    input_multiple: int
    output_stride: int
    dilation: str | None
    nhwc: bool

    def forward(self, x: Tensor, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        self.check_input(x)
        feats = super().forward(x, names)
        if self.nhwc:
            feats = {k: v.permute(0, 3, 1, 2) for k, v in feats.items()}
        return feats

    def check_input(self, x: Tensor) -> None:
        """A clear error for an input size this model cannot take."""
        h, w = x.shape[-2:]
        if self.input_size is not None and (h, w) != self.input_size:
            raise UsageError(
                f"timm:{self.timm_name} takes only {self.input_size[0]}x{self.input_size[1]} inputs (absolute "
                f"position embeddings without interpolation), got {h}x{w}: resize the images to that size "
                "(segzoo's predict does it for you)"
            )
        m = self.input_multiple
        if m > 1 and (h % m or w % m):
            raise UsageError(
                f"timm:{self.timm_name} takes sizes that are multiples of {m}, got {h}x{w}: pad or resize to "
                f"{math.ceil(h / m) * m}x{math.ceil(w / m) * m} (segzoo's predict pads for you)"
            )

    def input_rule(self) -> dict[str, Any]:
        """The input sizes taken, as JSON: ``{"fixed": [H, W]}``, ``{"multiple": m}`` or ``{}``."""
        if self.input_size is not None:
            return {"fixed": list(self.input_size)}
        return {"multiple": self.input_multiple} if self.input_multiple > 1 else {}


def timm_backbone(
    model_name: str,
    *,
    output_stride: int | None = None,
    out_indices: tuple[int, ...] | None = None,
    pretrained: bool = False,
    **timm_kwargs: Any,
) -> TimmBackbone:
    """A timm model with ``features_only=True``; feature names are the positions of timm's features.

    ``output_stride`` (8, 16 or 32): timm's own dilation where the model has it, segzoo's generic
    dilation for other convolutional models; a clear error for those that cannot be dilated.
    ``timm_kwargs`` are limited to :data:`ALLOWED_TIMM_KWARGS` (regularisation and input size).
    """
    import timm

    _check_kwargs(model_name, timm_kwargs)
    if not timm.is_model(model_name):
        raise UnknownNameError(unknown_name_message("timm model", f"timm:{model_name}", _timm_names()))
    if output_stride is not None and output_stride not in (8, 16, 32):
        raise UsageError(f"timm:{model_name}: output_stride must be 8, 16 or 32, got {output_stride!r}")
    kwargs: dict[str, Any] = {"features_only": True, "pretrained": pretrained, **timm_kwargs}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)

    net, native = _create(model_name, kwargs, output_stride)
    nhwc = getattr(getattr(net, "output_fmt", "NCHW"), "value", "NCHW") == "NHWC"
    fixed, multiple, (size, outs) = _input_rule(net, model_name, nhwc)
    reported = list(net.feature_info.reduction())
    reductions = [_reduction(size[0], o.shape[-2], r) for o, r in zip(outs, reported, strict=True)]
    if reductions != reported and fixed is None:
        # unpadded convolutions shrink small odd inputs further: measure at a bigger, round size
        clean = (_round_up(256, multiple),) * 2
        outs2 = _runs(net, clean, nhwc)
        if outs2 is not None:
            reductions = [
                _reduction(clean[0], o.shape[-2], r, 1.5) for o, r in zip(outs2, reported, strict=True)
            ]
    how = "timm" if native and output_stride not in (None, 32) else None
    if output_stride is not None and max(reductions) > output_stride:
        size = fixed or (_round_up(256, multiple),) * 2  # strides show exactly at powers of two
        reductions = _dilate(net, model_name, output_stride, size, nhwc, reductions)
        how = "segzoo"

    names = net.feature_info.module_name()
    info = [
        Feature(str(i), int(o.shape[1]), r, n)
        for i, (n, o, r) in enumerate(zip(names, outs, reductions, strict=True))
    ]
    bb = TimmBackbone(net, {str(i): str(i) for i in range(len(names))}, method="outputs", feature_info=info)
    bb.timm_name, bb.input_size, bb.input_multiple = model_name, fixed, multiple
    bb.output_stride, bb.dilation, bb.nhwc = max(reductions), how, nhwc
    return bb


def _check_kwargs(model_name: str, timm_kwargs: dict[str, Any]) -> None:
    loading = [k for k in timm_kwargs if k in _LOADING_KWARGS]
    if loading:
        raise UsageError(
            f"timm:{model_name}: {', '.join(map(repr, loading))} cannot be given to a timm backbone: they "
            "load weights or configs from files or URLs. segzoo loads timm's own weights only with "
            "create(..., pretrained_backbone=True)"
        )
    fixed = [k for k in timm_kwargs if k in _SEGZOO_SETS]
    if fixed:
        raise UsageError(
            f"timm:{model_name}: {', '.join(map(repr, fixed))} is set by segzoo (an RGB features_only model); "
            "remove it"
        )
    unknown = [k for k in timm_kwargs if k not in ALLOWED_TIMM_KWARGS]
    if unknown:
        raise UsageError(
            f"timm:{model_name}: unknown backbone argument(s) {', '.join(map(repr, unknown))}; a timm backbone "
            f"takes output_stride, out_indices and {', '.join(ALLOWED_TIMM_KWARGS)}"
        )
    for k, v in timm_kwargs.items():
        ok = ALLOWED_TIMM_KWARGS[k]
        if not isinstance(v, ok) or (isinstance(v, bool) and ok is not bool):
            raise UsageError(f"timm:{model_name}: {k}={v!r} has the wrong type")
        if isinstance(v, (list, tuple)) and not (
            len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
        ):
            raise UsageError(f"timm:{model_name}: {k} must be an int or two ints, got {v!r}")


def _create(model_name: str, kwargs: dict[str, Any], output_stride: int | None) -> tuple[nn.Module, bool]:
    """timm.create_model with the first set of optional keywords the model accepts (a TypeError
    names an unexpected keyword: the next set is tried); returns whether output_stride went in.

    timm's own output_stride is tried first; families without it raise a TypeError or assert
    that only 32 is valid, and are then dilated by segzoo."""
    import timm

    dyn = [] if {"dynamic_img_size", "dynamic_img_pad"} & kwargs.keys() else ["dynamic_img_size"]

    def build(os_kw: dict[str, Any]) -> nn.Module:
        attempts = (
            [{"dynamic_img_size": True, "dynamic_img_pad": True}, {"dynamic_img_size": True}] if dyn else []
        )
        for extra in attempts:
            try:
                return timm.create_model(model_name, **kwargs, **os_kw, **extra)
            except TypeError:
                continue
        return timm.create_model(model_name, **kwargs, **os_kw)

    if output_stride in (8, 16):
        try:
            return build({"output_stride": output_stride}), True
        except (TypeError, AssertionError, ValueError, NotImplementedError):
            pass  # no dilation in timm for this family
    return build({}), False


def _forward(net: nn.Module, size: tuple[int, int], nhwc: bool) -> list[Tensor]:
    """Features for one zero input of ``size`` (see :func:`shape_forward`)."""
    out = shape_forward(net, size)
    out = list(out.values()) if isinstance(out, dict) else list(out)
    return [o.permute(0, 3, 1, 2) if nhwc else o for o in out]


def _runs(net: nn.Module, size: tuple[int, int], nhwc: bool) -> list[Tensor] | None:
    """The features at ``size``, or None where the model fails there or returns other channels
    than timm says (a token grid reshaped to the wrong height and width still "runs")."""
    try:
        outs = _forward(net, size, nhwc)
    except Exception:  # any failure means: not this size (shape asserts, mismatches, reshapes)
        return None
    return outs if [o.shape[1] for o in outs] == list(net.feature_info.channels()) else None


def _input_rule(
    net: nn.Module, model_name: str, nhwc: bool
) -> tuple[tuple[int, int] | None, int, tuple[tuple[int, int], list[Tensor]]]:
    """(fixed size or None, multiple, a size that ran with its features), measured with forwards
    at an odd size, then at multiples of the model's coarsest stride, then at its pretrained size."""
    outs = _runs(net, _ODD_SIZE, nhwc)
    if outs is not None:
        return None, 1, (_ODD_SIZE, outs)
    outs = _runs(net, _PROBE_SIZE, nhwc)
    if outs is not None:
        m = max(round(_PROBE_SIZE[0] / o.shape[-2]) for o in outs)
        outs = _runs(net, (3 * m, 5 * m), nhwc)
        if outs is not None:
            return None, m, ((3 * m, 5 * m), outs)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    size = tuple(int(s) for s in cfg.get("input_size", (3, 224, 224))[-2:])
    try:
        outs = _forward(net, size, nhwc)  # type: ignore[arg-type]
    except Exception as err:
        raise UsageError(
            f"timm:{model_name} does not run even at its own input size {size[0]}x{size[1]}: "
            f"{type(err).__name__}: {err}"
        ) from err
    return size, 1, (size, outs)  # type: ignore[return-value]


def _dilate(
    net: nn.Module, model_name: str, output_stride: int, size: tuple[int, int], nhwc: bool, before: list[int]
) -> list[int]:
    """segzoo's generic dilation, verified: every feature ends at ``min(its reduction, output_stride)``."""
    want = [min(r, output_stride) for r in before]
    got: list[int] = []

    def check() -> None:
        try:
            outs = _forward(net, size, nhwc)
        except Exception as err:
            raise NotDilatableError(f"the dilated model fails: {type(err).__name__}: {err}") from err
        got[:] = [_reduction(size[0], o.shape[-2], w) for o, w in zip(outs, want, strict=True)]
        if got != want:
            raise NotDilatableError(
                f"its features still end at strides {got}, not {want}: a stride taken outside Conv2d and "
                "pooling layers (e.g. a patch merging)"
            )

    try:
        dilate(net, output_stride, probe_size=size, check=check)
    except NotDilatableError as err:
        full = NotDilatableError(
            f"timm:{model_name} cannot be dilated to output_stride={output_stride} ({err}); its features "
            f"are at strides {before}. Leave output_stride unset and use a head that works at those "
            "strides, e.g. 'fcn' or 'lraspp'"
        )
        full.reason = str(err)
        raise full from None
    return got


def _reduction(size: int, out: int, reported: int, slack: float = 1.0) -> int:
    """timm's reported reduction where the measured size agrees with it (a stride-14 patch
    embedding gives 19 for 256, padded; ``slack`` allows unpadded convolutions), else the measured one."""
    if math.floor(size / reported / slack) - (slack > 1) <= out <= math.ceil(size / reported):
        return reported
    return max(1, round(size / out))


def _round_up(n: int, m: int) -> int:
    return math.ceil(n / m) * m


def _timm_names() -> list[str]:
    import timm

    return [f"timm:{n}" for n in timm.list_models()]


@hookimpl
def register_backbones(register):
    register(
        "timm:*",
        timm_backbone,
        description="any timm model, e.g. timm:convnext_tiny (features_only; output_stride 8/16 by dilation)",
    )
