"""Calibrate the synthetic dataset: how fast does a small zoo model learn it on this machine?

A plain PyTorch loop (no segzoo trainer): lraspp_mobilenet_v3_large from random init, AdamW, the
reference train/eval presets at a small base size, BatchNorm momentum 0.1 (torchvision's
MobileNetV3 uses 0.01, too slow for a few hundred steps). Prints eval-mode val mIoU against
wall-clock seconds of training.

    python benchmarks/calibrate_synth.py [--scale 0.75 1.5] [--render '{"colour_cue": 0.0}']
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

import segzoo
from segzoo.data import SyntheticSegmentation, collate, eval_transforms, train_transforms
from segzoo.metrics import ConfusionMatrix, SegmentationMetrics


def evaluate(model: nn.Module, loader: DataLoader, num_classes: int) -> SegmentationMetrics:
    model.eval()
    cm = ConfusionMatrix(num_classes)
    with torch.inference_mode():
        for x, y in loader:
            cm.update(model(x)["out"], y)
    model.train()
    return cm.compute(loader.dataset.classes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lraspp_mobilenet_v3_large")
    p.add_argument("--n", type=int, default=1000, help="synthetic samples (train + val)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=6)
    p.add_argument("--size", type=int, default=128, help="base size of the presets and crop size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--scale", type=float, nargs=2, default=(0.5, 2.0), help="random-resize range")
    p.add_argument("--render", default="{}", help="JSON keyword arguments of segzoo.data.synthetic.render")
    args = p.parse_args()
    render = json.loads(args.render)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    k = args.num_classes
    train = SyntheticSegmentation(
        args.n, seed=args.seed, split="train", num_classes=k, cache=True,
        transforms=train_transforms(args.size, args.size, scale=tuple(args.scale)), **render,
    )  # fmt: skip
    val = SyntheticSegmentation(
        args.n, seed=args.seed, split="val", num_classes=k, transforms=eval_transforms(args.size), **render
    )
    g = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=collate, generator=g
    )
    val_loader = DataLoader(val, batch_size=1, collate_fn=collate)

    model = segzoo.create(args.model, num_classes=k)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss(ignore_index=255)
    print(f"{args.model}, {k} classes, {len(train)} train / {len(val)} val, {args.size} px, "
          f"batch {args.batch_size}, AdamW lr {args.lr}, {args.threads} threads, scale {args.scale}, {render}")  # fmt: skip
    print(f"{'step':>5} {'train s':>8} {'loss':>7} {'val mIoU':>9}")
    model.train()
    step, train_time, running = 0, 0.0, 0.0
    while step < args.steps:
        t0 = time.perf_counter()  # training time includes making the batches, not evaluating
        for x, y in train_loader:
            loss = loss_fn(model(x)["out"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
            train_time += time.perf_counter() - t0
            if step % args.eval_every == 0 or step == args.steps:
                metrics = evaluate(model, val_loader, k)
                print(f"{step:5d} {train_time:8.1f} {running:7.3f} {metrics.miou:9.3f}", flush=True)
            if step == args.steps:
                break
            t0 = time.perf_counter()
    print(
        "per-class IoU: "
        + ", ".join(f"{n} {v:.3f}" for n, v in zip(metrics.class_names, metrics.iou, strict=True))
    )


if __name__ == "__main__":
    main()
