"""Which head should I pick? Every registered head on one backbone, trained from scratch on the
synthetic set with the same budget, then measured.

Each head gets the same seed, images, crops and order, optimizer (AdamW, poly LR), batch and number
of steps, and an auxiliary FCN head (loss weight 0.5). Printed per head: validation mIoU (eval mode,
segzoo.evaluate), parameters (with the backbone, without the aux head), multiply-adds of one
512 x 512 image (torch's FLOP counter / 2, on the meta device), training images/s (median step after
the warm-up) and inference images/s (eval mode, batch 4 at the training size).

    nice -n 10 python benchmarks/bench_heads.py [--backbone resnet18] [--steps 80] [--size 128] [--heads unet fpn]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import segzoo
from segzoo.data import SyntheticSegmentation, collate, train_transforms

NUM_CLASSES = 6


def macs_at_512(head: str, backbone: str) -> float:
    with torch.device("meta"):
        model = segzoo.create(head, backbone=backbone, num_classes=NUM_CLASSES).eval()
        x = torch.empty(1, 3, 512, 512)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    return counter.get_total_flops() / 2


def train_and_measure(head: str, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    model = segzoo.create(head, backbone=args.backbone, num_classes=NUM_CLASSES, aux=True)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux_classifier."))
    data = SyntheticSegmentation(
        args.n, seed=0, split="train", num_classes=NUM_CLASSES, cache=True,
        transforms=train_transforms(args.size, args.size),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch, shuffle=True, generator=gen, collate_fn=collate, drop_last=True
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=args.steps, power=0.9)
    crit = torch.nn.CrossEntropyLoss(ignore_index=255)
    model.train()
    step_s, done = [], 0
    while done < args.steps:
        t0 = time.perf_counter()
        for images, masks in loader:
            out = model(images)
            loss = crit(out["out"], masks) + 0.5 * crit(out["aux"], masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss.item()
            t1 = time.perf_counter()
            step_s.append(t1 - t0)
            t0, done = t1, done + 1
            if done == args.steps:
                break
    model.eval()
    val = SyntheticSegmentation(args.n, seed=0, split="val", num_classes=NUM_CLASSES)
    miou = segzoo.evaluate(model, val, size=args.size).metrics.miou
    x = torch.randn(4, 3, args.size, args.size)
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(args.infer_iters):
            model(x)
        infer_s = (time.perf_counter() - t0) / args.infer_iters
    warm = step_s[args.warmup :] or step_s
    return {
        "miou": miou,
        "params": params,
        "train_ips": args.batch / sorted(warm)[len(warm) // 2],
        "infer_ips": 4 / infer_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--heads", nargs="*", default=None, help="default: every registered head")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n", type=int, default=200, help="synthetic samples (80 %% train, 20 %% val)")
    p.add_argument("--infer-iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--no-train", action="store_true", help="parameters and multiply-adds only (seconds)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    heads = args.heads or segzoo.list_heads()
    rows = []
    for head in heads:
        t0 = time.perf_counter()
        macs = macs_at_512(head, args.backbone)
        if args.no_train:
            with torch.device("meta"):
                model = segzoo.create(head, backbone=args.backbone, num_classes=NUM_CLASSES)
            nan = float("nan")
            r = {
                "miou": nan,
                "params": sum(p.numel() for p in model.parameters()),
                "train_ips": nan,
                "infer_ips": nan,
            }
        else:
            r = train_and_measure(head, args)
        rows.append([head, f"{r['miou']:.3f}", f"{r['params'] / 1e6:.2f} M", f"{macs / 1e9:.1f} G",
                     f"{r['train_ips']:.1f}", f"{r['infer_ips']:.1f}"])  # fmt: skip
        print(f"done {head} in {time.perf_counter() - t0:.0f} s: {rows[-1]}", file=sys.stderr, flush=True)
    headers = ["head", "val mIoU", "params", "MACs @512", "train img/s", "infer img/s"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.no_train:
        print(f"\n{args.backbone}, {NUM_CLASSES} classes: parameters and multiply-adds only (--no-train)")
        return
    print(
        f"\n{args.backbone}, {args.steps} steps of batch {args.batch} at {args.size} px (AdamW lr {args.lr}, "
        f"poly), aux FCN head at 0.5, {args.threads} threads; inference: batch 4 at {args.size} px"
    )


if __name__ == "__main__":
    main()
