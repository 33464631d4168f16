"""Random predictions and targets, and a torch.distributed worker (kept apart from the test module
so that spawned processes import only torch and segzoo.metrics)."""

from __future__ import annotations

import torch

from segzoo.metrics import ConfusionMatrix


def random_batch(n=3, k=5, h=17, w=23, seed=0, absent=()):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, h, w), generator=g)
    pred = torch.where(
        torch.rand(n, h, w, generator=g) < 0.6, target, torch.randint(0, k, (n, h, w), generator=g)
    )
    for c in absent:  # make class c appear in neither
        target[target == c] = (c + 1) % k
        pred[pred == c] = (c + 1) % k
    target[torch.rand(n, h, w, generator=g) < 0.1] = 255
    return pred, target


def reduce_worker(rank: int, world: int, init: str, k: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        pred, target = random_batch(k=k, n=4)
        cm = ConfusionMatrix(k)
        cm.update(pred[rank::world], target[rank::world])
        cm.all_reduce()
        torch.save(cm.matrix, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()
