"""The metric's share of evaluation time (goal: at most 2 %).

Runs ``segzoo.evaluate`` (torchvision's protocol: shorter side resized, batch 1, argmax of
``out``) on generated VOC-sized images, timing ``ConfusionMatrix.update`` inside it, and compares
the update with the torchvision references' formulation (boolean indexing, then bincount).

    python benchmarks/bench_eval.py [--images 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import segzoo
from segzoo.data import SyntheticSegmentation
from segzoo.metrics import ConfusionMatrix

CASES = [  # (model, resize)
    ("lraspp_mobilenet_v3_large", 520),
    ("deeplabv3_mobilenet_v3_large", 520),
    ("fcn_resnet50", 520),
    ("lraspp_mobilenet_v3_large", 128),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_update(mat: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, n: int) -> None:
    """torchvision/references/segmentation/utils.py ConfusionMatrix.update."""
    a, b = target.flatten(), pred.flatten()
    k = (a >= 0) & (a < n)
    inds = n * a[k].to(torch.int64) + b[k]
    mat += torch.bincount(inds, minlength=n**2).reshape(n, n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8, help="images per case")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    k = 6
    data = SyntheticSegmentation(args.images, seed=0, num_classes=k, size=(375, 500))  # VOC-like sizes

    timed = {"s": 0.0, "calls": 0}
    original = ConfusionMatrix.update

    def timed_update(self, prediction, target):
        sync(device)
        t0 = time.perf_counter()
        original(self, prediction, target)
        sync(device)
        timed["s"] += time.perf_counter() - t0
        timed["calls"] += 1

    ConfusionMatrix.update = timed_update  # type: ignore[method-assign]
    rows = []
    try:
        for name, size in CASES:
            model = segzoo.create(name, num_classes=k).to(device).eval()
            segzoo.evaluate(model, torch.utils.data.Subset(data, [0]), size=size, device=device)  # warm up
            timed.update(s=0.0, calls=0)
            result = segzoo.evaluate(model, data, size=size, device=device)
            share = 100 * timed["s"] / result.seconds
            rows.append(
                (name, size, result.images, result.seconds, 1000 * timed["s"] / timed["calls"], share)
            )
    finally:
        ConfusionMatrix.update = original  # type: ignore[method-assign]

    print(f"segzoo.evaluate on {args.images} generated images of ~375x500, {device}, {args.threads} threads")
    print(f"{'MODEL':30} {'RESIZE':>6} {'IMAGES':>6} {'EVAL s':>7} {'METRIC ms/img':>13} {'SHARE %':>7}")
    for name, size, n, secs, ms, share in rows:
        print(f"{name:30} {size:6d} {n:6d} {secs:7.2f} {ms:13.2f} {share:7.2f}")

    # the update alone: segzoo's (no boolean indexing, no sync) against the reference's
    print("\nConfusionMatrix.update alone, one 520 x 693 image, 21 classes (median of 50)")
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 21, (1, 520, 693), generator=g).to(device)
    target[:, ::7] = 255
    pred = torch.randint(0, 21, (1, 520, 693), generator=g).to(device)
    cm, mat = ConfusionMatrix(21, device=device), torch.zeros(21, 21, dtype=torch.int64, device=device)
    for label, fn in (("segzoo", lambda: cm.update(pred, target)),
                      ("torchvision reference", lambda: reference_update(mat, pred, target, 21))):  # fmt: skip
        times = []
        for _ in range(50):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        print(f"  {label:22} {1000 * sorted(times)[25]:.2f} ms")
    assert torch.equal(cm.matrix, mat), "the two formulations disagree"


if __name__ == "__main__":
    main()
