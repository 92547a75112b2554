"""`egoscale finetune`: few-shot finetuning of a whole encoder, the paper's evaluation.

    egoscale finetune --checkpoint runs/vith14@476_1.0_1 --train /data/imagenet/train \\
        --val /data/imagenet/val --condition permissive --img-size 476 --out evals/vith14@476_1.0_1_permissive

Runs on the shared training loop (train/loop.py), so it resumes, logs and runs under torchrun
exactly like pretraining.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from egoscale.config import opt, to_dict
from egoscale.errors import ConfigError
from egoscale.evaluate.common import (EvalData, ImageList, load_backbone, model_info, resolve_fraction,
                                      train_transform, val_transform)
from egoscale.evaluate.labelled import label_subset, read_list, scan, topk_correct, write_list
from egoscale.fileio import write_json_atomic
from egoscale.models.checkpoint import vit_meta
from egoscale.models.vit import choose_attention
from egoscale.train.distributed import Dist, cleanup, init_distributed, parallelize
from egoscale.train.loop import (PRECISION_HELP, PRECISIONS, LoopSettings, Trainer, adamw, check_precision,
                                 lr_schedule, use_bf16)


@dataclass
class FinetuneConfig(EvalData):
    """Few-shot finetuning; defaults are the paper's recipe."""

    out: str = opt("evals/finetune", "output folder: result.json, metrics.jsonl, train_files.txt")
    epochs: int = opt(50, "passes over the training subset")
    batch_size: int = opt(64, "images per device per step")
    lr: float | None = opt(None, "learning rate (default 1e-4; 5e-5 from 448 px up)")
    weight_decay: float = opt(0.05, "AdamW weight decay")
    workers: int = opt(4, "data loader processes")
    device: str = opt("auto", "auto, cuda or cpu")
    compile: bool = opt(False, "torch.compile the model")
    precision: str = opt("auto", PRECISION_HELP, choices=list(PRECISIONS))
    grad_checkpointing: bool = opt(False, "recompute activations in backward")
    log_every: int = opt(10, "training-loss line every N steps")
    resume: str = opt("auto", "auto, none or a checkpoint path")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self):
        super().__post_init__()
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("--epochs and --batch-size must be at least 1")
        check_precision(self.precision)


def prepare_labelled(cfg, out: Path):
    """Train subset (saved as train_files.txt) and the full val set."""
    full = scan(cfg.train)
    val = scan(cfg.val, classes=full.classes)
    condition, fraction = resolve_fraction(cfg.condition, cfg.label_fraction)
    if cfg.train_list:
        train = read_list(cfg.train_list, full.root, full.classes)
    else:
        train = label_subset(full, fraction, cfg.sampling, cfg.seed) if fraction < 1 else full
    return full, train, val, condition, fraction


def evaluate_classifier(module, loader, d: Dist, bf16: bool = False) -> dict:
    """Loss, top-1 and top-5 over a (rank-sharded) loader, summed across ranks."""
    module.eval()
    tot = torch.zeros(4, device=d.device, dtype=torch.float64)  # loss sum, top1, top5, n
    with torch.no_grad(), torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=bf16):
        for x, y in loader:
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            logits = module(x).float()
            c = topk_correct(logits, y)
            tot += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), c[1], c[5], len(y)],
                                device=d.device, dtype=torch.float64)
    if d.enabled:
        torch.distributed.all_reduce(tot)
    module.train()
    n = max(tot[3].item(), 1)
    return {"val_loss": tot[0].item() / n, "top1": tot[1].item() / n, "top5": tot[2].item() / n}


def _epoch_batches(dataset, cfg, d: Dist, steps_per_epoch: int, start_step: int):
    """Batches from `start_step` on, epoch after epoch; each epoch a seeded permutation."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(dataset, d.world_size, d.rank, shuffle=True, seed=cfg.seed, drop_last=False)
    loader = DataLoader(dataset, cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=False,
                        pin_memory=d.device.type == "cuda", persistent_workers=cfg.workers > 0)
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            if i >= steps_per_epoch:
                break
            if skip:
                skip -= 1
                continue
            yield x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        epoch += 1


def finetune(cfg: FinetuneConfig, log=print) -> dict:
    out = Path(cfg.out)
    d = init_distributed(cfg.device)
    try:
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
        full, train, val, condition, fraction = prepare_labelled(cfg, out)
        torch.manual_seed(cfg.seed)
        vit, info = load_backbone(cfg.checkpoint, cfg.model, cfg.img_size, len(full.classes), cfg.pool)
        vit = vit.to(d.device)
        size = vit.spec.img_size
        lr = cfg.lr if cfg.lr is not None else (5e-5 if size >= 448 else 1e-4)
        if d.is_main:
            write_list(train, out / "train_files.txt")
            log(f"finetune {vit.spec.name} at {size}px: {len(train)} of {len(full)} training images "
                f"({condition}, {fraction:g}, {cfg.sampling}), {len(val)} val, {len(full.classes)} classes, "
                f"lr {lr:g}, {cfg.epochs} epochs, batch {cfg.batch_size} x {d.world_size}")
        bf16 = use_bf16(cfg.precision, d.device)
        choose_attention(vit, d.device, bf16)
        module = parallelize(vit, d, grad_checkpointing=cfg.grad_checkpointing, compile=cfg.compile)
        decay = [p for n, p in vit.named_parameters() if p.ndim >= 2 and n not in vit.no_weight_decay()]
        no_decay = [p for n, p in vit.named_parameters() if not (p.ndim >= 2 and n not in vit.no_weight_decay())]
        optimizer = adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr, d.device)
        train_ds = ImageList(train, train_transform(size))
        val_ds = ImageList(val, val_transform(size))
        val_idx = list(range(d.rank, len(val_ds), d.world_size))  # every val image exactly once
        val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val_ds, val_idx), cfg.batch_size,
                                                 num_workers=cfg.workers)
        steps_per_epoch = max(1, math.ceil(len(train) / (cfg.batch_size * d.world_size)))
        settings = LoopSettings(out=out, max_steps=cfg.epochs * steps_per_epoch, log_every=cfg.log_every,
                                save_every=steps_per_epoch, resume=cfg.resume, seed=cfg.seed, progress=cfg.progress,
                                desc=f"finetune {vit.spec.name}", precision=cfg.precision)

        def evaluate(step):
            return {"epoch": math.ceil(step / steps_per_epoch), **evaluate_classifier(module, val_loader, d, bf16)}

        trainer = Trainer(settings, d, vit, module, optimizer, lr_schedule("constant", lr, 0, settings.max_steps),
                          lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                          to_file=lambda st: {"model": st, "egoscale": vit_meta(vit)},
                          from_file=lambda obj: obj["model"], config=to_dict(cfg), evaluate=evaluate,
                          eval_every=steps_per_epoch)
        if trainer.resume() and d.is_main:
            log(f"resumed at epoch {trainer.step // steps_per_epoch}")
        if trainer.step >= settings.max_steps and (out / "result.json").is_file():
            if d.is_main:
                log(f"{out}: already finetuned for {cfg.epochs} epochs; nothing to do")
            return json.loads((out / "result.json").read_text())
        summary = trainer.fit(_epoch_batches(train_ds, cfg, d, steps_per_epoch, trainer.step))
        result = {"eval": "finetune", "condition": condition, "label_fraction": fraction, "sampling": cfg.sampling,
                  "seed": cfg.seed, "n_train": len(train), "n_train_total": len(full), "n_val": len(val),
                  "classes": len(full.classes), **model_info(vit), **info,
                  **_best_and_last(out / "metrics.jsonl"), "epochs": cfg.epochs, "seconds": summary["seconds"]}
        if d.is_main:
            write_json_atomic(out / "result.json", result)
        return result
    finally:
        cleanup()


def _best_and_last(metrics: Path) -> dict:
    evals = [r for r in map(json.loads, metrics.read_text().splitlines()) if "top1" in r]
    best = max(evals, key=lambda r: (r["top1"], r["top5"]))
    last = evals[-1]
    return {"top1": best["top1"], "top5": best["top5"], "best_epoch": best.get("epoch"),
            "top1_last": last["top1"], "top5_last": last["top5"], "val_loss_last": last["val_loss"]}
