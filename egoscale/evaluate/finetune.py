"""`egoscale finetune`: few-shot finetuning of a whole encoder, the paper's evaluation.

    egoscale finetune --checkpoint runs/vith14@476_1.0_1 --train /data/imagenet/train \\
        --val /data/imagenet/val --condition permissive --img-size 476 --out evals/vith14@476_1.0_1_permissive

Runs on the shared training loop (train/loop.py), so it resumes, logs and runs under torchrun
exactly like pretraining.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from egoscale.config import to_dict
from egoscale.evaluate.common import (ImageList, describe_result, load_backbone,
                                      prepare_labelled, record_run, result_row, train_transform, val_transform)
from egoscale.evaluate.config import IDENTITY, FinetuneConfig, eval_record, finetune_lr
from egoscale.evaluate.labelled import topk_correct
from egoscale.fileio import write_json_atomic
from egoscale.models.checkpoint import vit_meta
from egoscale.models.vit import choose_attention
from egoscale.train.distributed import Dist, cleanup, init_distributed, is_main_process, parallelize
from egoscale.runfolder import stage_folder
from egoscale.train.training_state import has_checkpoint
from egoscale.train.loop import CHECKPOINT, LoopSettings, Trainer, adamw, lr_schedule, read_metrics, use_bf16


def main(cfg: FinetuneConfig) -> int:
    r = finetune(cfg)
    if is_main_process():
        print(describe_result(r, cfg.out))
    return 0


def evaluate_classifier(module, loader, dist: Dist, bf16: bool = False) -> dict:
    """Loss, top-1 and top-5 over a (rank-sharded) loader, summed across ranks."""
    module.eval()
    tot = torch.zeros(4, device=dist.device, dtype=torch.float64)  # loss sum, top1, top5, n
    with torch.no_grad(), torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
        for x, y in loader:
            x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
            logits = module(x).float()
            c = topk_correct(logits, y)
            tot += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), c[1], c[5], len(y)],
                                device=dist.device, dtype=torch.float64)
    if dist.enabled:
        torch.distributed.all_reduce(tot)
    module.train()
    n = max(tot[3].item(), 1)
    return {"val_loss": tot[0].item() / n, "top1": tot[1].item() / n, "top5": tot[2].item() / n}


@torch.no_grad()
def _frozen_features(vit, dataset, cfg, dist: Dist, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(dataset, cfg.batch_size, num_workers=cfg.workers)
    vit.eval()
    feats, labels = [], []
    with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
        for x, y in loader:
            feats.append(vit.forward_head(vit.forward_features(x.to(dist.device)), pre_logits=True).float())
            labels.append(y.to(dist.device))
    vit.train()
    return torch.cat(feats), torch.cat(labels)


def warm_head(vit, dataset, cfg, dist: Dist, bf16: bool, lr: float = 1e-3) -> float:
    """LP-FT's first half: the head alone trained on frozen features of the training subset (no
    augmentation), `cfg.head_warmup` AdamW steps on batches drawn with the run's seed (the same on
    every rank). Returns the head's final training loss."""
    feats, labels = _frozen_features(vit, dataset, cfg, dist, bf16)
    opt = torch.optim.AdamW(vit.head.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    batch = min(len(labels), max(2, cfg.batch_size))
    loss = torch.zeros(())
    for _ in range(cfg.head_warmup):
        j = torch.randperm(len(labels), generator=g)[:batch].to(dist.device)
        loss = F.cross_entropy(vit.head(feats[j]), labels[j])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def _epoch_batches(dataset, cfg, dist: Dist, steps_per_epoch: int, start_step: int):
    """Batches from `start_step` on, epoch after epoch; each epoch a seeded permutation."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(dataset, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed, drop_last=False)
    loader = DataLoader(dataset, cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=False,
                        pin_memory=dist.device.type == "cuda", persistent_workers=cfg.workers > 0)
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            if i >= steps_per_epoch:
                break
            if len(y) < 2:  # a trailing batch of one: BatchNorm cannot normalise it (its images are
                continue    # drawn again in other epochs' permutations)
            if skip:
                skip -= 1
                continue
            yield x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
        epoch += 1


def finetune(cfg: FinetuneConfig, log=print) -> dict:
    out = Path(cfg.out)
    dist = init_distributed(cfg.device)
    record = eval_record(cfg)
    try:
        with stage_folder(out, "finetune", record, IDENTITY, has_state=has_checkpoint(out, cfg.resume),
                          resume=cfg.resume, lock=dist.is_main) as changed:
            return _finetune(cfg, dist, out, record, changed, log)
    finally:
        cleanup()


def _finetune(cfg: FinetuneConfig, dist: Dist, out: Path, record: dict, changed: dict, log) -> dict:
    data = prepare_labelled(cfg)
    torch.manual_seed(cfg.seed)
    vit, info = load_backbone(cfg.checkpoint, cfg.model, cfg.img_size, data.classes, cfg.pool, cfg.init_seed)
    vit = vit.to(dist.device)
    size = vit.spec.img_size
    lr = finetune_lr(cfg, size)
    if dist.is_main:
        log(f"finetune {vit.spec.name} at {size}px: {len(data.train)} of {len(data.full)} training images "
            f"({data.condition}, {data.fraction:g}, {cfg.sampling}), {len(data.val)} val, {data.classes} "
            f"classes, lr {lr:g}, {cfg.epochs} epochs, batch {cfg.batch_size} x {dist.world_size}")
    bf16 = use_bf16(cfg.precision, dist.device)
    choose_attention(vit, dist.device, bf16)
    fresh = cfg.resume == "none" or (cfg.resume == "auto" and not (out / CHECKPOINT).is_file())
    if cfg.head_warmup and fresh:  # the head first learns to read the frozen encoder (a resumed run loads its own)
        loss = warm_head(vit, ImageList(data.train, val_transform(size, cfg.interpolation)), cfg, dist, bf16)
        if dist.is_main:
            log(f"head warm-up: {cfg.head_warmup} steps on frozen features, training loss {loss:.3f}")
    module = parallelize(vit, dist, grad_checkpointing=cfg.grad_checkpointing, compile=cfg.compile)
    decay = [p for n, p in vit.named_parameters() if p.ndim >= 2 and n not in vit.no_weight_decay()]
    no_decay = [p for n, p in vit.named_parameters() if not (p.ndim >= 2 and n not in vit.no_weight_decay())]
    optimizer = adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}], lr, dist.device)
    train_ds = ImageList(data.train, train_transform(size, (cfg.crop_scale, 1.0), cfg.interpolation))
    val_ds = ImageList(data.val, val_transform(size, cfg.interpolation))
    val_idx = list(range(dist.rank, len(val_ds), dist.world_size))  # every val image exactly once
    val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val_ds, val_idx), cfg.batch_size,
                                             num_workers=cfg.workers)
    steps_per_epoch = max(1, math.ceil(len(data.train) / (cfg.batch_size * dist.world_size)))
    # a checkpoint per epoch: a resumed finetuning run continues at an epoch's start
    settings = LoopSettings.of(cfg, out=out, max_steps=cfg.epochs * steps_per_epoch, save_every=steps_per_epoch,
                               desc=f"finetune {vit.spec.name}")

    def evaluate(step):
        return {"epoch": math.ceil(step / steps_per_epoch), **evaluate_classifier(module, val_loader, dist, bf16)}

    trainer = Trainer(settings, dist, vit, module, optimizer, lr_schedule("constant", lr, 0, settings.max_steps),
                      lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                      to_file=lambda st: {"model": st, "egoscale": vit_meta(vit)},
                      from_file=lambda obj: obj["model"], config=to_dict(cfg), evaluate=evaluate,
                      eval_every=steps_per_epoch * cfg.eval_every, tracking=cfg)
    if trainer.resume() and dist.is_main:
        log(f"resumed at epoch {trainer.step // steps_per_epoch}")
    if dist.is_main:  # written once the folder's checkpoint (if any) has loaded
        record_run(out, data, record, changed)
    if trainer.step >= settings.max_steps and (out / "result.json").is_file():
        if dist.is_main:
            log(f"{out}: already finetuned for {cfg.epochs} epochs; nothing to do")
        return json.loads((out / "result.json").read_text())
    summary = trainer.fit(_epoch_batches(train_ds, cfg, dist, steps_per_epoch, trainer.step))
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "top1" in r]
    result = result_row("finetune", cfg, data, vit, info, evals, epochs=cfg.epochs,
                        seconds=summary["seconds"])
    if dist.is_main:
        write_json_atomic(out / "result.json", result)
    return result
