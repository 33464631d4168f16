"""``segzoo convert smp SRC OUT``: a folder written by smp's ``save_pretrained`` -> a segzoo folder.

smp's config.json is untrusted: every field is checked (known architectures, known keyword
arguments with their types and ranges) before anything is built; weights are read with
safetensors only and mapped by key prefix, each shape checked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import segzoo
from segzoo.errors import ConfigError, FolderError, UsageError, WeightsError

SMP_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
MAX_CONFIG_BYTES = 1 << 20

Check = Callable[[str, Any], Any]


def _fail(field: str, value: Any, wanted: str) -> ConfigError:
    return ConfigError(f"smp config.json: {field} must be {wanted}, got {json.dumps(value)[:80]}")


def _int(lo: int, hi: int) -> Check:
    def check(field: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _fail(field, v, f"an integer in {lo}..{hi}")
        return v

    return check


def _float(lo: float, hi: float) -> Check:
    def check(field: str, v: Any) -> float:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or not lo <= v <= hi
        ):
            raise _fail(field, v, f"a number in {lo}..{hi}")
        return float(v)

    return check


def _one_of(*choices: Any) -> Check:
    def check(field: str, v: Any) -> Any:
        if not any(v is c or (type(v) is type(c) and v == c) for c in choices):
            raise _fail(field, v, "one of " + ", ".join(json.dumps(c) for c in choices))
        return v

    return check


def _ints(n: int | None, lo: int, hi: int) -> Check:
    def check(field: str, v: Any) -> list[int]:
        ok = (
            isinstance(v, list)
            and (n is None or len(v) == n)
            and all(isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi for x in v)
        )
        if not ok or not v:
            raise _fail(field, v, f"a list of {n or 'some'} integers in {lo}..{hi}")
        return list(v)

    return check


def _optional(check: Check) -> Check:
    return lambda field, v: None if v is None else check(field, v)


def _any_str_or_none(field: str, v: Any) -> Any:
    if v is not None and not isinstance(v, str):
        raise _fail(field, v, "a string or null")
    return v


_NORM = _one_of("batchnorm", "identity", True, False)
_INTERP = _one_of(*INTERPOLATIONS)
_CHANNELS = _int(1, 8192)
_UPSAMPLING = _int(1, 64)
_DROPOUT = _float(0.0, 1.0)
_UNET = {
    "decoder_use_norm": _NORM,
    "decoder_channels": _ints(None, 1, 8192),
    "decoder_attention_type": _one_of(None, "scse"),
    "decoder_interpolation": _INTERP,
}
_DEEPLAB = {
    "decoder_channels": _CHANNELS,
    "decoder_atrous_rates": _ints(3, 1, 256),
    "decoder_aspp_separable": _one_of(True, False),
    "decoder_aspp_dropout": _DROPOUT,
}

# smp class -> (segzoo head, default encoder depth, allowed depths, head kwargs, default output stride)
ARCHS: dict[str, tuple[str, int, tuple[int, ...], dict[str, Check], int | None]] = {
    "Unet": ("unet", 5, (1, 2, 3, 4, 5), _UNET, None),
    "UnetPlusPlus": ("unetplusplus", 5, (1, 2, 3, 4, 5), _UNET, None),
    "MAnet": (
        "manet",
        5,
        (1, 2, 3, 4, 5),
        {
            "decoder_use_norm": _NORM,
            "decoder_channels": _ints(None, 1, 8192),
            "decoder_pab_channels": _CHANNELS,
            "decoder_interpolation": _INTERP,
        },
        None,
    ),
    "Linknet": ("linknet", 5, (1, 2, 3, 4, 5), {"decoder_use_norm": _NORM}, None),
    "FPN": (
        "fpn",
        5,
        (4, 5),
        {
            "decoder_pyramid_channels": _CHANNELS,
            "decoder_segmentation_channels": _CHANNELS,
            "decoder_merge_policy": _one_of("add", "cat"),
            "decoder_dropout": _DROPOUT,
            "decoder_interpolation": _INTERP,
            "upsampling": _UPSAMPLING,
        },
        None,
    ),
    "PSPNet": (
        "pspnet",
        3,
        (1, 2, 3, 4, 5),
        {
            "psp_out_channels": _CHANNELS,
            "decoder_use_norm": _NORM,
            "psp_dropout": _DROPOUT,
            "upsampling": _UPSAMPLING,
        },
        None,
    ),
    "DeepLabV3": ("deeplabv3_smp", 5, (1, 2, 3, 4, 5), {**_DEEPLAB, "upsampling": _optional(_UPSAMPLING)}, 8),
    "DeepLabV3Plus": ("deeplabv3plus_smp", 5, (3, 4, 5), {**_DEEPLAB, "upsampling": _UPSAMPLING}, 16),
    "PAN": (
        "pan",
        5,
        (3, 4, 5),
        {"decoder_channels": _CHANNELS, "decoder_interpolation": _INTERP, "upsampling": _UPSAMPLING},
        16,
    ),
    "UPerNet": (
        "upernet",
        5,
        (3, 4, 5),
        {"decoder_channels": _CHANNELS, "decoder_use_norm": _NORM, "upsampling": _UPSAMPLING},
        None,
    ),
    "Segformer": (
        "segformer",
        5,
        (3, 4, 5),
        {"decoder_segmentation_channels": _CHANNELS, "upsampling": _UPSAMPLING},
        None,
    ),
}
_OUTPUT_STRIDES = {"DeepLabV3": (8, 16), "DeepLabV3Plus": (8, 16), "PAN": (16, 32)}


def read_smp_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise FolderError(f"{src} has no config.json: is it a folder written by smp's save_pretrained?")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; an smp config is a few hundred")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return config


def plan_from_smp_config(config: dict[str, Any]) -> dict[str, Any]:
    """The segzoo build (head, backbone, num_classes, backbone and head kwargs) of a validated
    smp config; a clear ConfigError or UsageError for anything segzoo does not rebuild."""
    cls = config.get("_model_class")
    if cls == "DPT":
        from .dpt import plan_dpt

        return plan_dpt(config, common=_common_fields(config))
    if not isinstance(cls, str) or cls not in ARCHS:
        raise ConfigError(
            f"smp config.json: _model_class {json.dumps(cls)[:60]} is not one segzoo converts; "
            f"known: {sorted([*ARCHS, 'DPT'])}"
        )
    head, default_depth, depths, head_checks, default_os = ARCHS[cls]
    common = _common_fields(config)
    fields = {"encoder_depth", *head_checks}
    if cls in _OUTPUT_STRIDES:
        fields.add("encoder_output_stride")
    _refuse_unknown(config, fields, cls)
    depth = _one_of(*depths)("encoder_depth", config.get("encoder_depth", default_depth))
    head_kwargs = {"encoder_depth": depth}
    for key, check in head_checks.items():
        if key in config:
            head_kwargs[key] = check(key, config[key])
    if (
        head in ("unet", "unetplusplus", "manet")
        and len(head_kwargs.get("decoder_channels", [0] * depth)) != depth
    ):
        raise _fail("decoder_channels", config["decoder_channels"], f"{depth} integers (encoder_depth)")
    output_stride = default_os
    if cls in _OUTPUT_STRIDES:
        output_stride = _one_of(*_OUTPUT_STRIDES[cls])(
            "encoder_output_stride", config.get("encoder_output_stride", default_os)
        )
    backbone, backbone_kwargs = map_encoder(common["encoder_name"], depth, output_stride)
    return {
        "head": head,
        "backbone": backbone,
        "num_classes": common["classes"],
        "backbone_kwargs": backbone_kwargs,
        "head_kwargs": head_kwargs,
        "smp_class": cls,
        "encoder_prefix": "encoder.model." if backbone.startswith("timm:") else "encoder.",
    }


def _common_fields(config: dict[str, Any]) -> dict[str, Any]:
    name = config.get("encoder_name")
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise _fail("encoder_name", name, "an encoder name such as 'resnet34' or 'tu-resnet18'")
    _any_str_or_none("encoder_weights", config.get("encoder_weights"))
    _one_of(3)("in_channels", config.get("in_channels", 3))
    _one_of(None)("activation", config.get("activation"))
    if config.get("aux_params") is not None:
        raise ConfigError(
            "smp config.json: aux_params (smp's classification head) has no segzoo counterpart; "
            "convert a model saved without it"
        )
    return {"encoder_name": name, "classes": _int(1, 100_000)("classes", config.get("classes", 1))}


_COMMON = {
    "_model_class",
    "encoder_name",
    "encoder_weights",
    "in_channels",
    "classes",
    "activation",
    "aux_params",
}


def _refuse_unknown(config: dict[str, Any], fields: set[str], cls: str) -> None:
    unknown = sorted(set(config) - _COMMON - fields)
    if unknown:
        raise ConfigError(
            f"smp config.json: {cls} argument(s) {unknown} are not supported by segzoo's converter; "
            f"it reads {sorted(fields)}"
        )


def map_encoder(name: str, depth: int, output_stride: int | None) -> tuple[str, dict[str, Any]]:
    """smp encoder name -> segzoo backbone name and kwargs that give the same modules and keys."""
    kwargs: dict[str, Any] = {}
    if name in SMP_RESNETS:
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        kwargs["dilation"] = "uniform"  # smp dilates every conv of a stage alike
        return name, kwargs
    if name.startswith("tu-"):
        import timm

        timm_name = name[3:]
        if not timm.is_model(timm_name):
            raise UsageError(
                f"smp encoder {name!r}: timm has no model {timm_name!r} (segzoo builds tu- encoders with timm)"
            )
        if _starts_at_stride4(timm_name):
            first = 1 if "tresnet" in timm_name else 0  # smp's own exceptions, mirrored
            kwargs["out_indices"] = list(range(first, depth - 1 + first))
        else:
            first = 1 if "dla" in timm_name else 0
            kwargs["out_indices"] = list(range(first, depth + first))
        if output_stride not in (None, 32):
            kwargs["output_stride"] = output_stride
        return f"timm:{timm_name}", kwargs
    raise UsageError(
        f"smp encoder {name!r} has no segzoo backbone: segzoo rebuilds smp's {', '.join(SMP_RESNETS)} "
        "(torchvision keys) and every timm encoder written 'tu-<timm model>' (e.g. tu-resnet34, "
        "tu-convnext_tiny); retrain or re-save the model with one of those"
    )


def _starts_at_stride4(timm_name: str) -> bool:
    """smp's "transformer style": features at 4, 8, 16, 32 (no stride-2 stage)."""
    import timm
    import torch

    with torch.device("meta"):
        net = timm.create_model(timm_name, features_only=True, pretrained=False)
    red = list(net.feature_info.reduction())
    if red == [2 ** (i + 2) for i in range(len(red))]:
        return True
    if red == [2 ** (i + 1) for i in range(len(red))]:
        return False
    raise UsageError(f"smp encoder tu-{timm_name}: feature reductions {red} are a layout smp does not build")


def map_keys(state: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """smp state dict -> segzoo keys: ``encoder.`` (``encoder.model.`` for timm features) -> ``backbone.``,
    ``decoder.``/``segmentation_head.`` -> ``classifier.``."""
    enc = plan["encoder_prefix"]
    old_deeplab = {"decoder.0.": "decoder.aspp.", "decoder.1.": "decoder.conv.", "decoder.2.": "decoder.bn."}
    out = {}
    for key, value in state.items():
        if key.startswith(enc):
            new = "backbone." + key[len(enc) :]
        elif key.startswith(("decoder.", "segmentation_head.")):
            if plan["smp_class"] == "DeepLabV3":
                for a, b in old_deeplab.items():  # smp < 0.3 keys, which smp itself still reads
                    if key.startswith(a):
                        key = b + key[len(a) :]
            new = "classifier." + key
        else:
            raise WeightsError(
                f"smp model.safetensors: unexpected tensor {key[:120]!r} (expected encoder.*, decoder.*, "
                "segmentation_head.*; smp's classification head has no segzoo counterpart)"
            )
        out[new] = value
    return out


def convert_smp(src: str | os.PathLike, *, outdir: str | os.PathLike, overwrite: bool = False) -> Path:
    """An smp ``save_pretrained`` folder -> a segzoo folder at ``outdir`` (``segzoo.create(
    "local-dir:OUTDIR")`` then gives smp's outputs)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    src, outdir = Path(src), Path(outdir)
    if not src.is_dir():
        raise FolderError(f"{src} is not a folder; smp's save_pretrained writes one")
    if outdir.exists() and any(outdir.iterdir()) and not overwrite:
        raise UsageError(f"{outdir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    plan = plan_from_smp_config(read_smp_config(src))
    try:
        with torch.device("meta"):  # no time spent on random init: every tensor comes from the file
            model = segzoo.create(
                plan["head"],
                backbone=plan["backbone"],
                num_classes=plan["num_classes"],
                backbone_kwargs=plan["backbone_kwargs"],
                head_kwargs=plan["head_kwargs"],
            )
    except (ValueError, TypeError) as err:  # a combination the builders refuse (e.g. channels vs depth)
        raise ConfigError(
            f"smp config.json describes a {plan['smp_class']} segzoo cannot build: {err}"
        ) from None
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise FolderError(f"{src} has no model.safetensors (segzoo reads smp weights from safetensors only)")
    try:
        state = map_keys(load_file(str(weights)), plan)
    except SafetensorError as err:
        raise WeightsError(f"{weights} is not a readable safetensors file: {err}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{weights} does not fit the {plan['smp_class']} segzoo builds from config.json: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise WeightsError(
            f"{weights}: tensor shapes differ from config.json's model (key, file, model): {wrong[:5]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict (a non-persistent buffer) needs a real build
        raise WeightsError(f"the {plan['smp_class']} model has tensors no checkpoint holds: {left[:5]}")
    return model.save_pretrained(outdir)


@segzoo.hookimpl
def register_converters(register):
    register(
        "smp",
        convert_smp,
        description="a segmentation_models_pytorch save_pretrained folder (or hf-hub:ORG/REPO): SRC",
    )
