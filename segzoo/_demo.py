"""``segzoo demo``: every registered model on a generated image, with output shapes and times."""

from __future__ import annotations

import argparse
import time

import torch


def synthetic_image(size: int, seed: int = 0) -> torch.Tensor:
    """A 1 x 3 x size x size image of smooth colour gradients and a few discs, ImageNet-normalised."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([xs, ys, (xs + ys) / 2])
    for _ in range(4):
        cy, cx, r = torch.rand(3, generator=g) * torch.tensor([1.0, 1.0, 0.3])
        mask = (ys - cy) ** 2 + (xs - cx) ** 2 < r**2
        img[:, mask] = torch.rand(3, 1, generator=g)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return ((img - mean) / std).unsqueeze(0)


def run_demo(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.cli import table

    x = synthetic_image(args.size)
    rows = []
    for name in segzoo.list_models():
        t0 = time.perf_counter()
        model = segzoo.create(name).eval()
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = model(x)
        t2 = time.perf_counter()
        params = sum(p.numel() for p in model.parameters())
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items())
        rows.append([name, f"{params / 1e6:.1f}M", shapes, f"{t1 - t0:.2f}", f"{(t2 - t1) * 1000:.0f}"])
    print(f"Every registered model on one generated {args.size}x{args.size} image (random weights, CPU):")
    print(table(rows, ["MODEL", "PARAMS", "OUTPUT", "BUILD s", "FORWARD ms"]))
    return 0
