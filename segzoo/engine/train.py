"""Training and fine-tuning: torchvision's reference recipe, resumable, on one process or many."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import hub
from .._factory import create
from .._files import write_text
from ..errors import SegzooError, UsageError
from . import _distributed as dist
from ._checkpoint import (
    CheckpointError,
    latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ._device import check_device, device_name
from .evaluate import _Preprocessed, evaluate

__all__ = ["TrainConfig", "TrainResult", "TrainingDivergedError", "train"]


class TrainingDivergedError(SegzooError, FloatingPointError):
    """The loss became NaN or infinite: the message says which setting to change."""


def _field(default: Any, help: str, **cli: Any) -> Any:
    """A TrainConfig field with its ``help`` text and, for ``segzoo train``, optional ``choices`` and
    ``parse`` (a str -> value function raising UsageError)."""
    return field(default=default, metadata={"help": help, **cli})


# the layouts segzoo.data reads (segzoo.data.formats.FORMATS) and the generated set; written out
# rather than imported, since segzoo.data imports torchvision (engine modules import it lazily)
DATA_FORMATS = ("voc", "folder", "coco", "cityscapes", "ade20k", "synth")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``segzoo train --help`` documents each field."""

    model: str = _field(
        MISSING,
        "any name segzoo.create accepts (recipe, name.tag, local-dir:, hf-hub:, or a head with --backbone)",
    )
    backbone: str | None = _field(
        None, "the backbone when MODEL is a head (e.g. deeplabv3 --backbone timm:convnext_tiny)"
    )
    data: str = _field(
        "synth",
        "dataset folder (VOC, COCO, Cityscapes, ADE20K or images/ + masks/), or 'synth' for the generated set",
    )
    format: str | None = _field(
        None,
        "dataset layout (detected when not given)",
        choices=DATA_FORMATS,
    )
    categories: str | None = _field(
        None, "coco: category names or ids, comma-separated (e.g. cat,dog; default: the 20 VOC ones)"
    )
    train_split: str = _field("train", "split to train on")
    val_split: str = _field("val", "split to evaluate on")
    synth_n: int = _field(200, "samples of the synthetic set (train + val)")
    synth_seed: int = _field(0, "seed of the synthetic set")
    num_classes: int | None = _field(None, "classes to predict (default: the dataset's)")
    pretrained: bool = _field(False, "start from the model's pretrained weights")
    pretrained_backbone: bool = _field(False, "start from backbone-only pretrained weights (ImageNet / timm)")
    ignore_mismatched: bool = _field(
        False, "re-initialise pretrained layers whose shape differs (another num_classes)"
    )
    aux: bool | None = _field(None, "use an auxiliary head and loss (default: the model's)")
    epochs: int = _field(30, "passes over the train split")
    max_steps: int | None = _field(None, "optimizer steps in all (overrides epochs)")
    batch_size: int = _field(8, "images per process per micro-batch")
    workers: int = _field(2, "DataLoader worker processes")
    base_size: int = _field(520, "base size of the random resize (train) and the eval resize")
    crop_size: int = _field(480, "random crop size (train)")
    scale: tuple[float, float] = _field((0.5, 2.0), "random resize range, as factors of base_size")
    hflip: float = _field(0.5, "horizontal flip probability")
    eval_size: int | None = _field(None, "eval resize (default: base_size)")
    optimizer: str = _field("sgd", "sgd (torchvision's recipe) or adamw", choices=("sgd", "adamw"))
    lr: float = _field(0.01, "base learning rate")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(1e-4, "weight decay")
    lr_power: float = _field(0.9, "power of the polynomial LR decay, stepped per iteration")
    warmup_steps: int = _field(0, "linear warm-up steps")
    warmup_factor: float = _field(0.01, "LR factor at the start of the warm-up")
    aux_weight: float = _field(0.5, "weight of the auxiliary loss")
    aux_lr_mult: float = _field(10.0, "LR multiplier of the auxiliary head")
    ignore_index: int = _field(255, "mask value left out of loss and metrics")
    amp: str | None = _field(
        None, "mixed precision: bf16, or fp16 (CUDA only, with a grad scaler)", choices=("bf16", "fp16")
    )
    channels_last: bool = _field(False, "run in channels_last memory format")
    grad_accum: int = _field(1, "micro-batches per optimizer step")
    freeze_backbone: bool = _field(False, "train the heads only")
    freeze_bn: bool = _field(False, "keep every BatchNorm's statistics and affine parameters fixed")
    sync_bn: bool = _field(False, "SyncBatchNorm across processes (CUDA only)")
    bn_momentum: float | None = _field(
        None, "set every BatchNorm's momentum (0.1 helps short runs of MobileNetV3, whose default is 0.01)"
    )
    eval_every: int = _field(1, "evaluate every N epochs (0: only at the end)")
    eval_every_steps: int | None = _field(None, "evaluate every N steps instead")
    checkpoint_every: int | None = _field(None, "checkpoint every N steps (default: every epoch)")
    keep_checkpoints: int = _field(2, "checkpoints to keep")
    output: str = _field("runs/train", "run folder: checkpoints, metrics.jsonl, best/ (a segzoo folder)")
    resume: bool = _field(False, "continue from the latest complete checkpoint in the output folder")
    push_to_hub: str | None = _field(None, "push the best model to this Hub repo at the end")
    seed: int = _field(0, "seed of the weights, data order and augmentation")
    device: str | None = _field(
        None, "cpu, cuda, cuda:1, ... (default: CUDA when available)", parse=device_name
    )
    log_every: int = _field(10, "log every N steps")
    progress: bool = _field(True, "show a progress bar")
    tensorboard: bool = _field(True, "also log to TensorBoard when it is installed")

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1 or self.max_steps, "epochs must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.grad_accum >= 1, "grad_accum must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (
                self.optimizer in ("sgd", "adamw"),
                f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}",
            ),
            (self.amp in (None, "bf16", "fp16"), f"amp must be 'bf16', 'fp16' or None, got {self.amp!r}"),
            (self.crop_size >= 8, "crop_size must be at least 8"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.workers >= 0, "workers must be 0 or more"),
            (
                self.format in (None, *DATA_FORMATS),
                f"format must be one of {', '.join(DATA_FORMATS)} or None, got {self.format!r}",
            ),
            (self.base_size >= 1, "base_size must be at least 1"),
            (self.eval_size is None or self.eval_size >= 1, "eval_size must be at least 1"),
            (0 <= self.hflip <= 1, f"hflip is a probability in [0, 1], got {self.hflip}"),
            (self.log_every >= 1, "log_every must be at least 1"),
            (self.eval_every >= 0, "eval_every must be 0 (only at the end) or more"),
            (
                self.checkpoint_every is None or self.checkpoint_every >= 1,
                "checkpoint_every must be at least 1",
            ),
            (self.warmup_steps >= 0, "warmup_steps must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.device is not None:
            check_device(self.device)
        self.scale = tuple(self.scale)  # type: ignore[assignment]

    def resumable_fields(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        keys = ("model", "backbone", "num_classes", "aux", "batch_size", "grad_accum", "optimizer", "seed")
        return {k: getattr(self, k) for k in keys}


@dataclass
class TrainResult:
    output: Path
    best_dir: Path | None
    best_miou: float | None
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)


class ResumableSampler(Sampler[int]):
    """Shuffled per epoch from (seed, epoch), split across ranks, and able to start mid-epoch.

    Rank r takes every world_size-th index of the epoch's permutation, so the ranks' batches
    together form exactly the global batch a single process would draw.
    """

    def __init__(
        self, n: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world_size - self.n]  # pad so every rank gets as many
        return iter(order[self.rank :: self.world_size][self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


class SeededSamples(Dataset):
    """Applies the training transforms with a generator seeded by (seed, epoch, index), so a sample's
    augmentation does not depend on the worker, the rank or where a resumed run picked up."""

    def __init__(self, dataset: Dataset, transforms: Any, seed: int) -> None:
        self.dataset, self.transforms, self.seed = dataset, transforms, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            return self.transforms(image, mask)


def _resolve_data(cfg: TrainConfig):
    from ..data import SyntheticSegmentation, open_dataset

    fmt = cfg.format or ("synth" if cfg.data == "synth" else None)
    if fmt == "synth":
        n_cls = cfg.num_classes
        kw = {"num_classes": n_cls} if n_cls is not None else {}
        # rendering a sample costs more than a training step's share of it: keep them in memory
        train = SyntheticSegmentation(
            cfg.synth_n, seed=cfg.synth_seed, split=cfg.train_split, cache=True, **kw
        )
        val = SyntheticSegmentation(cfg.synth_n, seed=cfg.synth_seed, split=cfg.val_split, cache=True, **kw)
        return train, val
    if not Path(cfg.data).exists():
        raise FileNotFoundError(
            f"no dataset at {cfg.data}: give a dataset folder (see --format), or --data synth"
        )
    # a dataset that names its classes says how many there are; num_classes is checked against it
    named = any((Path(cfg.data) / f).is_file() for f in ("classes.txt", "classes.json"))
    cats = [c.strip() for c in cfg.categories.split(",") if c.strip()] if cfg.categories else None
    train = open_dataset(
        cfg.data, fmt, cfg.train_split, num_classes=None if named else cfg.num_classes, categories=cats
    )
    val = open_dataset(
        cfg.data, fmt, cfg.val_split, num_classes=None if named else train.num_classes, categories=cats
    )
    return train, val


def _build_model(cfg: TrainConfig, num_classes: int, labels: list[str]) -> nn.Module:
    model = create(
        cfg.model,
        backbone=cfg.backbone,
        pretrained=cfg.pretrained,
        pretrained_backbone=cfg.pretrained_backbone,
        num_classes=num_classes,
        aux=cfg.aux,
        ignore_mismatched=cfg.ignore_mismatched,
    )
    if model.num_classes != num_classes:
        raise UsageError(
            f"{cfg.model} predicts {model.num_classes} classes but the dataset has {num_classes}: "
            "pass num_classes (and ignore_mismatched=True to re-initialise a pretrained classifier)"
        )
    model.config["labels"] = list(labels)
    model.config["ignore_index"] = cfg.ignore_index
    # predict and eval of the saved model resize as it was trained
    model.config["preprocessing"] = {
        **model.config["preprocessing"],
        "resize": cfg.eval_size or cfg.base_size,
    }
    if cfg.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    return model


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Backbone and head at the base LR, the aux head at aux_lr_mult x LR (torchvision's recipe)."""
    groups = [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad]},
        {"params": [p for p in model.classifier.parameters() if p.requires_grad]},
    ]
    if model.aux_classifier is not None:
        aux = [p for p in model.aux_classifier.parameters() if p.requires_grad]
        groups.append({"params": aux, "lr": cfg.lr * cfg.aux_lr_mult})
    return [g for g in groups if g["params"]]


def _lr_lambda(total: int, cfg: TrainConfig):
    def factor(step: int) -> float:
        poly = max(0.0, 1.0 - step / max(1, total)) ** cfg.lr_power
        if step < cfg.warmup_steps:
            alpha = step / cfg.warmup_steps
            return poly * (cfg.warmup_factor * (1 - alpha) + alpha)
        return poly

    return factor


def _freeze(model: nn.Module, cfg: TrainConfig) -> None:
    if cfg.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    if cfg.freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)


def _set_train_mode(model: nn.Module, cfg: TrainConfig) -> None:
    """Train mode, except for what is frozen: a frozen backbone and frozen BatchNorm keep their
    running statistics."""
    model.train()
    if cfg.freeze_backbone:
        model.backbone.eval()
    if cfg.freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class _Logger:
    def __init__(self, output: Path, enabled: bool, tensorboard: bool) -> None:
        self.path = output / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output / "tensorboard"))
            except ImportError:
                self.tb = None  # tensorboard is optional

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(config: TrainConfig | None = None, **kwargs: Any) -> TrainResult:
    """Train or fine-tune any model ``segzoo.create`` accepts; see ``TrainConfig`` for options.

    ``segzoo.train(model="lraspp_mobilenet_v3_large", data="synth", epochs=10)``. Runs unchanged
    under ``torchrun`` (DistributedDataParallel; only rank 0 writes files).
    """
    cfg = dataclasses.replace(config, **kwargs) if config is not None else TrainConfig(**kwargs)
    return _Trainer(cfg).run()


class _Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.ctx = dist.setup(cfg.device)
        self.device = self.ctx.device
        self.output = Path(cfg.output)

    # -- set-up: every check before any work ------------------------------------------------

    def prepare(self) -> None:
        from ..data import collate, train_transforms

        cfg = self.cfg
        if cfg.sync_bn and self.device.type != "cuda":
            raise UsageError("sync_bn needs CUDA: PyTorch's SyncBatchNorm does not run on the CPU")
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise UsageError("fp16 mixed precision needs CUDA; use amp='bf16' on the CPU")
        self.train_set, self.val_set = _resolve_data(cfg)
        if len(self.val_set) < self.ctx.world_size:
            raise UsageError(
                f"the val split has {len(self.val_set)} images, fewer than the {self.ctx.world_size} processes"
            )
        num_classes = cfg.num_classes or self.train_set.num_classes
        if num_classes < self.train_set.num_classes:
            raise UsageError(
                f"num_classes={num_classes} is smaller than the dataset's {self.train_set.num_classes} classes "
                f"({', '.join(self.train_set.classes)}): its masks hold values up to {self.train_set.num_classes - 1}"
            )
        labels = list(self.train_set.classes) + [
            f"class_{i}" for i in range(self.train_set.num_classes, num_classes)
        ]
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
        self.model = _build_model(cfg, num_classes, labels)
        found = latest_checkpoint(self.output, tidy=self.ctx.is_main) if cfg.resume else None
        if cfg.resume and found is None:
            raise CheckpointError(f"--resume: no complete checkpoint in {self.output}")
        self.checkpoint, self.resume_state = found if found is not None else (None, None)
        if self.checkpoint is None and self.ctx.is_main and (self.output / "metrics.jsonl").exists():
            raise UsageError(
                f"{self.output} holds an earlier run: pass resume=True (--resume) to continue it, "
                "or choose another output folder"
            )

        _freeze(self.model, cfg)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.ctx.world_size > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.params = _param_groups(self.model, cfg)
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                self.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)

        pre = self.model.config.get("preprocessing") or {}
        self.train_set.transforms = None
        transforms = train_transforms(
            cfg.base_size,
            cfg.crop_size,
            hflip_prob=cfg.hflip,
            scale=cfg.scale,
            mean=pre.get("mean", (0.485, 0.456, 0.406)),
            std=pre.get("std", (0.229, 0.224, 0.225)),
            ignore_index=cfg.ignore_index,
        )
        self.samples = SeededSamples(self.train_set, transforms, cfg.seed)
        self.sampler = ResumableSampler(
            len(self.samples), seed=cfg.seed, rank=self.ctx.rank, world_size=self.ctx.world_size
        )
        self.loader = DataLoader(
            self.samples,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            collate_fn=collate,
            drop_last=True,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )
        micro_per_epoch = len(self.sampler) // cfg.batch_size
        self.steps_per_epoch = micro_per_epoch // cfg.grad_accum
        if self.steps_per_epoch == 0:
            raise UsageError(
                f"the train split has {len(self.train_set)} samples, fewer than one step of batch_size "
                f"{cfg.batch_size} x grad_accum {cfg.grad_accum} x {self.ctx.world_size} process(es)"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(self.total_steps, cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.ddp = self.ctx.wrap(self.model)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=cfg.ignore_index)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            self.ctx.close()

    def _run(self) -> TrainResult:
        self.prepare()
        cfg = self.cfg
        if self.ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        self.step, self.best_miou, history = 0, None, []
        if self.checkpoint is not None:
            self._restore(self.checkpoint, self.resume_state)
            self.resume_state = None  # its tensors are in the model and optimizer now
        logger = _Logger(self.output, self.ctx.is_main, cfg.tensorboard)
        bar = None
        if cfg.progress and self.ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True, disable=None
            )
        try:
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                self.samples.epoch = epoch
                self.sampler.set_epoch(epoch, start * cfg.batch_size * cfg.grad_accum)
                _set_train_mode(self.model, cfg)
                t0, seen, losses = time.perf_counter(), 0, []
                micro = 0
                for images, masks in self.loader:
                    loss = self._micro_step(
                        images,
                        masks,
                        first=micro % cfg.grad_accum == 0,
                        last=(micro + 1) % cfg.grad_accum == 0,
                    )
                    losses.append(loss)
                    seen += images.shape[0] * self.ctx.world_size
                    micro += 1
                    if micro % cfg.grad_accum:
                        continue
                    self.step += 1
                    if bar is not None:
                        bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        record = self._log_record(epoch, losses, seen, t0)
                        history.append(record)
                        logger.log(record)
                        if bar is not None:
                            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                            img_s=f"{record['images_per_s']:.1f}")  # fmt: skip
                        losses, seen, t0 = [], 0, time.perf_counter()
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if self._eval_due(end_of_epoch):
                        history.append(self._evaluate(epoch, logger))
                        _set_train_mode(self.model, cfg)
                    if self._checkpoint_due(end_of_epoch):
                        self._save_checkpoint(epoch)
                    if self.step >= self.total_steps or end_of_epoch:
                        break
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        best = self.output / "best" if self.best_miou is not None else None
        if self.ctx.is_main and cfg.push_to_hub and best is not None:
            hub.push_to_hub(best, cfg.push_to_hub, commit_message=f"segzoo train: mIoU {self.best_miou:.4f}")
        return TrainResult(self.output, best, self.best_miou, self.step, history)

    def _micro_step(self, images: Tensor, masks: Tensor, *, first: bool, last: bool) -> float:
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        sync = self.ctx.no_sync(self.ddp) if not last else _nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "")
        with sync:
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                out = self.ddp(images)
                loss = self.loss_fn(out["out"].float(), masks)
                if "aux" in out:
                    loss = loss + cfg.aux_weight * self.loss_fn(out["aux"].float(), masks)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {loss.item()} at step {self.step}: lower the learning rate (lr={cfg.lr}) "
                    "or use amp='bf16' instead of fp16"
                )
            if first:
                # freed right before backward allocates the new ones, as in torchvision's references:
                # the allocator reuses the memory (zeroing after step() made CPU steps 8 % slower)
                self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss / cfg.grad_accum).backward()
        if last:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        return float(loss.detach())

    def _log_record(self, epoch: int, losses: list[float], seen: int, t0: float) -> dict[str, Any]:
        loss = self.ctx.mean(sum(losses) / max(1, len(losses)))
        return {
            "step": self.step,
            "epoch": epoch,
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": seen / max(1e-9, time.perf_counter() - t0),
        }

    def _eval_due(self, end_of_epoch: bool) -> bool:
        cfg = self.cfg
        if self.step >= self.total_steps:
            return True
        if cfg.eval_every_steps:
            return self.step % cfg.eval_every_steps == 0
        epoch = self.step // self.steps_per_epoch
        return end_of_epoch and cfg.eval_every > 0 and epoch % cfg.eval_every == 0

    def _checkpoint_due(self, end_of_epoch: bool) -> bool:
        if self.step >= self.total_steps:
            return True
        if self.cfg.checkpoint_every:
            return self.step % self.cfg.checkpoint_every == 0
        return end_of_epoch

    def _evaluate(self, epoch: int, logger: _Logger) -> dict[str, Any]:
        from ..data import collate, preset_from_config

        # each rank evaluates every world_size-th image; evaluate() all-reduces the confusion matrix
        preset = preset_from_config(self.model.config["preprocessing"])
        shard = torch.utils.data.Subset(
            _Preprocessed(self.val_set, preset), range(self.ctx.rank, len(self.val_set), self.ctx.world_size)
        )
        loader = DataLoader(shard, batch_size=1, collate_fn=collate)
        result = evaluate(self.model, loader, device=self.device, ignore_index=self.cfg.ignore_index)
        m = result.metrics
        record = {"step": self.step, "epoch": epoch, "val_miou": m.miou, "val_pixel_acc": m.pixel_accuracy}
        logger.log(record)
        if self.best_miou is None or m.miou > self.best_miou:
            self.best_miou = m.miou
            if self.ctx.is_main:
                self._save_best(m)
        return record

    def _save_best(self, metrics: Any) -> None:
        model = self.model
        dataset = (
            "segzoo-synthetic" if (self.cfg.format or self.cfg.data) == "synth" else Path(self.cfg.data).name
        )
        model.config["weights"] = {
            "tag": None,
            "source": f"segzoo train {self.cfg.model} on {self.cfg.data} (step {self.step})",
            "license": None,
            "metrics": {
                "dataset": dataset,
                "split": self.cfg.val_split,
                "miou": round(100 * metrics.miou, 2),
                "pixel_acc": round(100 * metrics.pixel_accuracy, 2),
            },
        }
        model.save_pretrained(self.output / "best")

    # -- checkpoints --------------------------------------------------------------------------

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "step": self.step,
            "epoch": epoch,
            "best_miou": self.best_miou,
            "config": _jsonable(dataclasses.asdict(self.cfg)),
            "model_config": _jsonable(self.model.config),
        }

    def _save_checkpoint(self, epoch: int) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.output, self._state(epoch), self.step, keep=self.cfg.keep_checkpoints)
        self.ctx.barrier()

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        saved = state["config"]
        mine = _jsonable(self.cfg.resumable_fields())
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            raise CheckpointError(
                f"{path} comes from another run: {', '.join(f'{k} was {a!r}, now {b!r}' for k, (a, b) in diff.items())}"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{path} does not fit {self.cfg.model}: {str(err).splitlines()[0]}"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step, self.best_miou = int(state["step"]), state["best_miou"]
        if self.ctx.is_main:
            self._forget_after_checkpoint()

    def _forget_after_checkpoint(self) -> None:
        """A killed run may have logged, or saved a best model, after its last checkpoint: drop
        those log lines (the resumed run logs those steps again), remove half-written folders,
        and keep the best model's mIoU so a worse one does not replace it."""

        log = self.output / "metrics.jsonl"
        if log.exists():
            kept = []
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= self.step:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # the line being written when the run was killed
            write_text(log, "".join(line + "\n" for line in kept))
        for leftover in self.output.glob(".best.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        best = self.output / "best" / "config.json"
        if best.exists():
            metrics = (json.loads(best.read_text()).get("weights") or {}).get("metrics") or {}
            if metrics.get("miou") is not None:
                self.best_miou = max(self.best_miou or 0.0, metrics["miou"] / 100)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple | set) else str(o)))
