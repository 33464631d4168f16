"""DPT (Ranftl et al., 2021): reassemble four feature maps to strides 4..32 and fuse them top-down,
as smp 0.6.0 builds it; and ``timm-vit:<name>``, a timm ViT backbone that also returns each block's
prefix (class) tokens, which DPT's readout reads.

The head works on any backbone: on a ViT it reassembles four blocks at one stride (16), on a CNN its
last four features (strides 4..32 need no resampling); the readout uses prefix tokens where the
backbone gives them (features named ``<feature>.prefix``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import segzoo

PREFIX = ".prefix"


class ViTFeatures(nn.Module):
    """A whole timm ViT (its parameters as timm names them) returning the chosen blocks as
    N x C x h x w maps and, for models with prefix tokens, those as N x C x P x 1."""

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.indices = [int(i) for i in indices]
        self.has_prefix = getattr(model, "num_prefix_tokens", 0) > 0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = self.model.forward_intermediates(
            x, indices=self.indices, intermediates_only=True, return_prefix_tokens=self.has_prefix
        )
        feats: dict[str, Tensor] = {}
        if self.has_prefix:
            for i, (_, tokens) in zip(self.indices, out, strict=True):
                feats[f"blocks.{i}{PREFIX}"] = tokens.transpose(1, 2).unsqueeze(-1)
            out = [o[0] for o in out]
        for i, f in zip(self.indices, out, strict=True):
            feats[f"blocks.{i}"] = f
        return feats


def vit_backbone(
    model_name: str,
    *,
    output_indices: Sequence[int] | None = None,
    depth: int = 4,
    img_size: int | None = None,
    dynamic_img_size: bool = True,
    keep_unused: bool = False,
    pretrained: bool = False,
) -> segzoo.FeatureExtractor:
    """``timm-vit:<name>``: a timm ViT's blocks ``output_indices`` (default: ``depth`` blocks
    evenly spaced, the last included, as smp samples them) at its patch stride, plus their
    prefix tokens. ``dynamic_img_size`` (default) takes any input size (padded to the patch).
    The final norm, classifier and later blocks are dropped unless ``keep_unused`` (smp keeps
    them, so its checkpoints convert with it)."""
    import timm

    from segzoo.errors import UnknownNameError

    if not timm.is_model(model_name):
        raise UnknownNameError(f"timm has no model {model_name!r} (for the backbone timm-vit:{model_name})")
    kwargs: dict[str, Any] = {"pretrained": pretrained}
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    if dynamic_img_size:
        kwargs.update(dynamic_img_size=True, dynamic_img_pad=True)
    model = timm.create_model(model_name, **kwargs)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"timm model {model_name!r} has no forward_intermediates: it is not a ViT segzoo can read"
        )
    info = model.feature_info
    n = len(info)
    if output_indices is None:
        output_indices = [int(n / depth * d) - 1 for d in range(1, depth + 1)]
    indices = [int(i) % n for i in output_indices]
    if not all(-n <= int(i) < n for i in output_indices) or len(set(indices)) != len(indices):
        raise ValueError(
            f"output_indices must be distinct blocks in -{n}..{n - 1}, got {list(output_indices)}"
        )
    if not keep_unused:
        model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
    net = ViTFeatures(model, indices)
    feats = [
        segzoo.Feature(f"blocks.{i}", info[i]["num_chs"], info[i]["reduction"], f"blocks.{i}")
        for i in indices
    ]
    if net.has_prefix:  # token "maps" first, so that the deepest spatial map stays the "out" role
        feats = [segzoo.Feature(f.name + PREFIX, f.channels, 0, f.node + PREFIX) for f in feats] + feats
    return segzoo.FeatureExtractor(net, {f.name: f.name for f in feats}, method="outputs", feature_info=feats)


class ReadoutConcat(nn.Module):
    """Concatenate the class token to every patch (or not, without one), then Linear + GELU."""

    def __init__(self, channels: int, has_prefix: bool) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(channels * (2 if has_prefix else 1), channels), nn.GELU())

    def forward(self, x: Tensor, prefix: Tensor | None) -> Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, c, -1).transpose(1, 2)
        if prefix is not None:
            x = torch.cat([x, prefix[:, :, 0, 0].unsqueeze(1).expand_as(x)], dim=2)
        return self.project(x).transpose(1, 2).reshape(n, -1, h, w)


class ReadoutAdd(nn.Module):
    def forward(self, x: Tensor, prefix: Tensor | None) -> Tensor:
        return x if prefix is None else x + prefix.mean(dim=2, keepdim=True)


class ReadoutIgnore(nn.Module):
    def forward(self, x: Tensor, prefix: Tensor | None) -> Tensor:
        return x


class ReassembleBlock(nn.Module):
    """1x1 conv, resample by ``factor`` (transposed conv up, strided conv down), 3x3 conv."""

    def __init__(self, cin: int, mid: int, cout: int, factor: float) -> None:
        super().__init__()
        self.project_to_out_channel = nn.Conv2d(cin, mid, 1)
        if factor > 1:
            self.upsample: nn.Module = nn.ConvTranspose2d(mid, mid, int(factor), stride=int(factor))
        elif factor == 1:
            self.upsample = nn.Identity()
        else:
            self.upsample = nn.Conv2d(mid, mid, 3, stride=int(1 / factor), padding=1)
        self.project_to_feature_dim = nn.Conv2d(mid, cout, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.project_to_feature_dim(self.upsample(self.project_to_out_channel(x)))


class ResidualConvBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.batch_norm_1 = nn.BatchNorm2d(channels)
        self.conv_2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.batch_norm_2 = nn.BatchNorm2d(channels)
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.batch_norm_1(self.conv_1(self.activation(x)))
        return self.batch_norm_2(self.conv_2(self.activation(y))) + x


class FusionBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.residual_conv_block1 = ResidualConvBlock(channels)
        self.residual_conv_block2 = ResidualConvBlock(channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, previous: Tensor | None, size) -> Tensor:
        x = self.residual_conv_block1(x)
        if previous is not None:
            x = x + previous
        x = self.residual_conv_block2(x)
        # smp: scale factor 2; resizing to the next level's size is the same there, and fits any size
        return self.project(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class DPTDecoder(nn.Module):
    def __init__(self, channels, reductions, has_prefix, readout, intermediate, fusion) -> None:
        super().__init__()
        if readout == "cat":
            blocks: list[nn.Module] = [ReadoutConcat(c, has_prefix) for c in channels]
        elif readout == "add":
            blocks = [ReadoutAdd() for _ in channels]
        elif readout == "ignore":
            blocks = [ReadoutIgnore() for _ in channels]
        else:
            raise ValueError(f"decoder_readout must be 'cat', 'add' or 'ignore', got {readout!r}")
        self.projection_blocks = nn.ModuleList(blocks)
        factors = [r / 2 ** (i + 2) for i, r in enumerate(reductions)]
        self.reassemble_blocks = nn.ModuleList(
            ReassembleBlock(c, m, fusion, f) for c, m, f in zip(channels, intermediate, factors, strict=True)
        )
        self.fusion_blocks = nn.ModuleList(FusionBlock(fusion) for _ in channels)

    def forward(self, features: Sequence[Tensor], prefixes: Sequence[Tensor | None]) -> Tensor:
        maps = [
            reassemble(project(f, p))
            for project, reassemble, f, p in zip(
                self.projection_blocks, self.reassemble_blocks, features, prefixes, strict=True
            )
        ][::-1]
        fused = None
        for i, (block, f) in enumerate(zip(self.fusion_blocks, maps, strict=True)):
            size = maps[i + 1].shape[-2:] if i + 1 < len(maps) else (2 * f.shape[-2], 2 * f.shape[-1])
            fused = block(f, fused, size)
        return fused  # type: ignore[return-value]


class DPTSegmentationHead(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.1),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.head(x), scale_factor=2, mode="bilinear", align_corners=True)


class DPTHead(nn.Module):
    def __init__(self, feats, prefixes, num_classes, readout, intermediate, fusion) -> None:
        super().__init__()
        self.in_features = tuple(f.name for f in feats) + tuple(p.name for p in prefixes)
        self._has_prefix = bool(prefixes)
        self.decoder = DPTDecoder(
            [f.channels for f in feats],
            [f.reduction for f in feats],
            self._has_prefix,
            readout,
            intermediate,
            fusion,
        )
        self.segmentation_head = DPTSegmentationHead(fusion, num_classes)

    def forward(self, *inputs: Tensor) -> Tensor:
        n = len(self.decoder.fusion_blocks)
        feats = inputs[:n]
        prefixes = list(inputs[n:]) if self._has_prefix else [None] * n
        return self.segmentation_head(self.decoder(feats, prefixes))


def build_dpt(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    decoder_readout: str = "cat",
    decoder_intermediate_channels: Sequence[int] = (256, 512, 1024, 1024),
    decoder_fusion_channels: int = 256,
) -> DPTHead:
    """DPT on the backbone's last ``len(decoder_intermediate_channels)`` spatial features; with a
    ``timm-vit:`` backbone, the readout reads its prefix tokens (smp ``DPT``)."""
    intermediate = tuple(int(c) for c in decoder_intermediate_channels)
    spatial = [f for f in feature_info if f.reduction > 0]
    if len(spatial) < len(intermediate):
        raise ValueError(f"DPT needs {len(intermediate)} backbone features, the backbone has {len(spatial)}")
    feats = spatial[-len(intermediate) :]
    for i, f in enumerate(feats):
        factor = f.reduction / 2 ** (i + 2)
        if factor not in (1, 2, 4, 8, 16, 0.5, 0.25, 0.125):
            raise ValueError(
                f"DPT cannot resample feature {f.name} (/{f.reduction}) to stride {2 ** (i + 2)}"
            )
    names = set(feature_info.names())
    prefixes = [feature_info[f.name + PREFIX] for f in feats if f.name + PREFIX in names]
    if prefixes and len(prefixes) != len(feats):
        prefixes = []
    return DPTHead(feats, prefixes, num_classes, decoder_readout, intermediate, int(decoder_fusion_channels))


def plan_dpt(config: dict[str, Any], *, common: dict[str, Any]) -> dict[str, Any]:
    """The segzoo build of a validated smp DPT config (see convert.plan_from_smp_config)."""
    from segzoo.errors import ConfigError, UsageError

    from .convert import _fail, _int, _ints, _one_of, _refuse_unknown

    fields = {
        "encoder_depth",
        "encoder_output_indices",
        "decoder_readout",
        "decoder_intermediate_channels",
        "decoder_fusion_channels",
        "img_size",
    }
    _refuse_unknown(config, fields, "DPT")
    name = common["encoder_name"]
    if not name.startswith("tu-"):
        raise UsageError(f"smp DPT encoder {name!r}: smp's DPT takes timm ViTs only ('tu-<vit name>')")
    depth = _int(1, 64)("encoder_depth", config.get("encoder_depth", 4))
    bb_kwargs: dict[str, Any] = {"depth": depth, "keep_unused": True}
    if config.get("encoder_output_indices") is not None:
        bb_kwargs["output_indices"] = _ints(depth, -64, 63)(
            "encoder_output_indices", config["encoder_output_indices"]
        )
    if "img_size" in config:
        bb_kwargs["img_size"] = _int(16, 4096)("img_size", config["img_size"])
    head_kwargs = {
        "decoder_readout": _one_of("cat", "add", "ignore")(
            "decoder_readout", config.get("decoder_readout", "cat")
        ),
        "decoder_fusion_channels": _int(1, 8192)(
            "decoder_fusion_channels", config.get("decoder_fusion_channels", 256)
        ),
    }
    if "decoder_intermediate_channels" in config:
        head_kwargs["decoder_intermediate_channels"] = _ints(depth, 1, 8192)(
            "decoder_intermediate_channels", config["decoder_intermediate_channels"]
        )
    elif depth != 4:
        raise _fail("decoder_intermediate_channels", None, f"{depth} integers (encoder_depth)")
    import timm

    if not timm.is_model(name[3:]):
        raise UsageError(f"smp encoder {name!r}: timm has no model {name[3:]!r}")
    if not isinstance(config.get("img_size", 0), int):
        raise ConfigError("smp config.json: img_size must be an integer")
    return {
        "head": "dpt",
        "backbone": f"timm-vit:{name[3:]}",
        "num_classes": common["classes"],
        "backbone_kwargs": bb_kwargs,
        "head_kwargs": head_kwargs,
        "smp_class": "DPT",
        "encoder_prefix": "encoder.",
    }
