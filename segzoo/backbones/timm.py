"""Any timm model as a backbone: ``"timm:<model name>"`` through timm's ``features_only``."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from .extractor import Feature, FeatureExtractor


def timm_backbone(
    model_name: str,
    *,
    output_stride: int | None = None,
    out_indices: tuple[int, ...] | None = None,
    pretrained: bool = False,
    **timm_kwargs: Any,
) -> FeatureExtractor:
    """A timm model with ``features_only=True``; feature names are timm's module names.

    ``output_stride`` (8, 16 or 32) is passed to timm for the models that support it.
    """
    import timm

    from .._registry import UnknownNameError, unknown_name_message

    if not timm.is_model(model_name):
        raise UnknownNameError(unknown_name_message("backbone", f"timm:{model_name}", _timm_names()))
    kwargs: dict[str, Any] = {"features_only": True, "pretrained": pretrained, **timm_kwargs}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if output_stride is not None and output_stride != 32:
        if output_stride not in (8, 16):
            raise ValueError(f"timm:{model_name}: output_stride must be 8, 16 or 32, got {output_stride!r}")
        kwargs["output_stride"] = output_stride
    try:
        net = timm.create_model(model_name, **kwargs)
    except TypeError as err:
        if "output_stride" in str(err):
            raise ValueError(
                f"timm model {model_name!r} does not support output_stride={output_stride}: its "
                "stride cannot be changed by dilation. Leave output_stride unset (32)."
            ) from None
        raise
    names = net.feature_info.module_name()
    info = [
        Feature(n, c, r, str(i))
        for i, (n, c, r) in enumerate(
            zip(names, net.feature_info.channels(), net.feature_info.reduction(), strict=True)
        )
    ]
    return FeatureExtractor(
        net, {str(i): n for i, n in enumerate(names)}, method="outputs", feature_info=info
    )


def _timm_names() -> list[str]:
    import timm

    return [f"timm:{n}" for n in timm.list_models()]


@hookimpl
def register_backbones(register):
    register(
        "timm:*",
        timm_backbone,
        description="any timm model, e.g. timm:convnext_tiny (features_only; output_stride where supported)",
    )
