"""U-Net (Ronneberger et al., 2015) and UNet++ (Zhou et al., 2018) decoders, as smp 0.6.0 builds them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import segzoo

from ._common import Attention, StageHead, conv_norm_relu, encoder_stages, segmentation_head, stage_channels
from ._common import upsample_to as _up


class DecoderBlock(nn.Module):
    """Upsample, concatenate the skip, two 3x3 conv-norm-ReLU (optional scSE attention)."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        use_norm: bool | str,
        attention_type: str | None,
        interpolation: str,
    ) -> None:
        super().__init__()
        self.interpolation = interpolation
        self.out_channels = out_channels
        if out_channels == 0:  # UNet++ nodes on a missing stage: smp keeps them empty
            return
        cat = in_channels + skip_channels
        self.conv1 = conv_norm_relu(cat, out_channels, 3, padding=1, use_norm=use_norm)
        self.attention1 = Attention(attention_type, cat)
        self.conv2 = conv_norm_relu(out_channels, out_channels, 3, padding=1, use_norm=use_norm)
        self.attention2 = Attention(attention_type, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None, size_like: Tensor | None = None) -> Tensor:
        x = _up(x, skip if skip is not None else size_like, self.interpolation)
        if self.out_channels == 0:
            return x.new_empty(x.shape[0], 0, *x.shape[-2:])
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetDecoder(nn.Module):
    def __init__(self, encoder_channels, decoder_channels, use_norm, attention_type, interpolation) -> None:
        super().__init__()
        enc = list(encoder_channels[1:])[::-1]
        ins = [enc[0], *decoder_channels[:-1]]
        skips = [*enc[1:], 0]
        self.center = nn.Identity()
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, use_norm, attention_type, interpolation)
            for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        feats = features[::-1]  # deepest first, the input last
        x = self.center(feats[0])
        skips = feats[1:-1]
        for i, block in enumerate(self.blocks):
            # the last block has no skip and resizes to the input
            x = block(x, skips[i] if i < len(skips) else None, size_like=feats[i + 1])
        return x


class UnetHead(StageHead):
    def __init__(
        self, stages, num_classes, decoder_channels, use_norm, attention_type, interpolation
    ) -> None:
        super().__init__(stages)
        self.decoder = UnetDecoder(
            stage_channels(stages), decoder_channels, use_norm, attention_type, interpolation
        )
        self.segmentation_head = segmentation_head(decoder_channels[-1], num_classes, 3)

    def decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(features)


def _check_channels(decoder_channels: Sequence[int], depth: int) -> tuple[int, ...]:
    channels = tuple(int(c) for c in decoder_channels)
    if len(channels) != depth or min(channels) < 1:
        raise ValueError(f"decoder_channels needs {depth} positive numbers (one per stage), got {channels}")
    return channels


def build_unet(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_use_norm: bool | str = "batchnorm",
    decoder_attention_type: str | None = None,
    decoder_interpolation: str = "nearest",
) -> UnetHead:
    """U-Net decoder on the backbone's stride-2..32 features (smp ``Unet``)."""
    stages = encoder_stages(feature_info, encoder_depth)
    channels = _check_channels(decoder_channels, encoder_depth)
    return UnetHead(
        stages, num_classes, channels, decoder_use_norm, decoder_attention_type, decoder_interpolation
    )


class UnetPlusPlusDecoder(nn.Module):
    """Nested dense skip pathways; node ``x_{d}_{l}`` is smp's (depth index d, layer index l)."""

    def __init__(self, encoder_channels, decoder_channels, use_norm, attention_type, interpolation) -> None:
        super().__init__()
        enc = list(encoder_channels[1:])[::-1]
        ins = [enc[0], *decoder_channels[:-1]]
        skips = [*enc[1:], 0]
        outs = list(decoder_channels)
        args = (use_norm, attention_type, interpolation)
        blocks = {}
        for layer in range(len(ins) - 1):
            for d in range(layer + 1):
                if d == 0:
                    cin, cskip, cout = ins[layer], skips[layer] * (layer + 1), outs[layer]
                else:
                    cin, cskip, cout = skips[layer - 1], skips[layer] * (layer + 1 - d), skips[layer]
                blocks[f"x_{d}_{layer}"] = DecoderBlock(cin, cskip, cout, *args)
        self.depth = len(ins) - 1
        blocks[f"x_0_{self.depth}"] = DecoderBlock(ins[-1], 0, outs[-1], *args)
        self.center = nn.Identity()
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, features: list[Tensor]) -> Tensor:
        inp = features[0]
        feats = features[1:][::-1]
        dense: dict[str, Tensor] = {}
        for layer in range(self.depth):
            for d in range(self.depth - layer):
                if layer == 0:
                    dense[f"x_{d}_{d}"] = self.blocks[f"x_{d}_{d}"](feats[d], feats[d + 1])
                else:
                    li = d + layer
                    cat = [dense[f"x_{i}_{li}"] for i in range(d + 1, li + 1)] + [feats[li + 1]]
                    dense[f"x_{d}_{li}"] = self.blocks[f"x_{d}_{li}"](
                        dense[f"x_{d}_{li - 1}"], torch.cat(cat, 1)
                    )
        last = f"x_0_{self.depth}"
        return self.blocks[last](dense[f"x_0_{self.depth - 1}"], size_like=inp)


class UnetPlusPlusHead(UnetHead):
    def __init__(
        self, stages, num_classes, decoder_channels, use_norm, attention_type, interpolation
    ) -> None:
        StageHead.__init__(self, stages)
        self.decoder = UnetPlusPlusDecoder(
            stage_channels(stages), decoder_channels, use_norm, attention_type, interpolation
        )
        self.segmentation_head = segmentation_head(decoder_channels[-1], num_classes, 3)


def build_unetplusplus(
    feature_info: segzoo.FeatureInfo,
    num_classes: int,
    *,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_use_norm: bool | str = "batchnorm",
    decoder_attention_type: str | None = None,
    decoder_interpolation: str = "nearest",
) -> UnetPlusPlusHead:
    """UNet++ decoder (nested dense skips) on the stride-2..32 features (smp ``UnetPlusPlus``)."""
    stages = encoder_stages(feature_info, encoder_depth)
    channels = _check_channels(decoder_channels, encoder_depth)
    return UnetPlusPlusHead(
        stages, num_classes, channels, decoder_use_norm, decoder_attention_type, decoder_interpolation
    )
