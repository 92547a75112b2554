"""`egoscale probe`: linear probe (and k-NN) on frozen features (class token, or `--pool avg`).

Features of the train subset and the val set are extracted once with the frozen encoder
(val transform, no augmentation), cached in chunks under OUT/features/ (OUT/features-avg/ for
`--pool avg`; a killed extraction
resumes at the next missing chunk), then a BatchNorm1d(affine=False)+Linear classifier is
trained on the cache. Orders of magnitude cheaper than finetuning, and it isolates the
representation's quality.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from egoscale.config import to_dict
from egoscale.evaluate.common import (ImageList, describe_result, load_backbone,
                                      prepare_labelled, record_run, result_row, val_transform)
from egoscale.evaluate.config import IDENTITY, ProbeConfig, eval_record
from egoscale.evaluate.labelled import topk_correct
from egoscale.fileio import append_jsonl, write_json_atomic
from egoscale.models.checkpoint import save_checkpoint
from egoscale.models.vit import make_head
from egoscale.runfolder import stage_folder
from egoscale.train.distributed import resolve_device
from egoscale.train.loop import read_metrics, use_bf16
from egoscale.train.tracking import Trackers


def main(cfg: ProbeConfig) -> int:
    print(describe_result(probe(cfg), cfg.out))
    return 0


@torch.no_grad()
def extract(vit, dataset, folder: Path, chunk: int, batch: int, workers: int, device, progress: bool, desc: str,
            bf16: bool = False):
    """Pooled features (N, C) and labels (N,), cached chunk by chunk under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(dataset) + chunk - 1) // chunk
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(dataset), desc=f"features {desc}", unit="img")
    feats, labels = [], []
    vit.eval()
    for c in range(n_chunks):
        path = folder / f"{c:05d}.pt"
        idx = list(range(c * chunk, min(len(dataset), (c + 1) * chunk)))
        if not path.is_file():
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx), batch, num_workers=workers)
            fs, ys = [], []
            for x, y in loader:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    fs.append(vit.forward_head(vit.forward_features(x.to(device)), pre_logits=True).float().cpu())
                ys.append(y)
                if bar is not None:
                    bar.update(len(y))
            save_checkpoint(path, {"features": torch.cat(fs), "labels": torch.cat(ys)})
        elif bar is not None:
            bar.update(len(idx))
        obj = torch.load(path, weights_only=True)
        feats.append(obj["features"])
        labels.append(obj["labels"])
    if bar is not None:
        bar.close()
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train_f, train_y, val_f, val_y, k: int, classes: int) -> dict:
    """Weighted k-NN on cosine similarity (weights exp(sim / 0.07), as in DINO)."""
    tr = F.normalize(train_f, dim=1)
    va = F.normalize(val_f, dim=1)
    k = min(k, len(tr))
    hits = {1: 0, 5: 0}
    for i in range(0, len(va), 1024):
        sim = va[i:i + 1024] @ tr.T
        w, j = sim.topk(k, dim=1)
        votes = torch.zeros(len(w), classes).scatter_add_(1, train_y[j], (w / 0.07).exp())
        c = topk_correct(votes, val_y[i:i + 1024])
        hits[1] += c[1]
        hits[5] += c[5]
    return {"knn_top1": hits[1] / len(va), "knn_top5": hits[5] / len(va), "knn_k": k}


def probe(cfg: ProbeConfig, log=print) -> dict:
    out = Path(cfg.out)
    record = eval_record(cfg)
    # cached features belong to one checkpoint, label subset and image size; the two poolings cache
    # apart (features/ and features-avg/), so --pool may differ
    has_state = any(out.glob("features*")) or (out / "result.json").is_file()
    with stage_folder(out, "probe", record, [k for k in IDENTITY if k != "pool"], has_state=has_state) as changed:
        return _probe(cfg, out, record, changed, log)


def _probe(cfg: ProbeConfig, out: Path, record: dict, changed: dict, log) -> dict:
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    data = prepare_labelled(cfg)
    torch.manual_seed(cfg.seed)
    vit, info = load_backbone(cfg.checkpoint, cfg.model, cfg.img_size, 0, cfg.pool, cfg.init_seed)
    vit = vit.to(device)
    size = vit.spec.img_size
    log(f"probe {vit.spec.name} at {size}px: {len(data.train)} train / {len(data.val)} val images, "
        f"{data.classes} classes")
    record_run(out, data, record, changed)
    t0 = time.time()
    tf = val_transform(size, cfg.interpolation)
    cache = out / ("features" if cfg.pool == "token" else f"features-{cfg.pool}")
    tr_f, tr_y = extract(vit, ImageList(data.train, tf), cache / "train", cfg.chunk, cfg.batch_size,
                         cfg.workers, device, cfg.progress, "train", bf16)
    va_f, va_y = extract(vit, ImageList(data.val, tf), cache / "val", cfg.chunk, cfg.batch_size,
                         cfg.workers, device, cfg.progress, "val", bf16)
    t_feat = time.time() - t0
    torch.manual_seed(cfg.seed)  # the classifier's start must not depend on how much was cached
    head = make_head(vit.spec.width, data.classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    metrics = out / "metrics.jsonl"
    metrics.write_text("")  # the classifier is retrained from the cache in seconds: no resume needed
    steps_per_epoch = max(1, -(-len(tr_f) // cfg.batch_size))
    epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
    # the classifier's curves, live in TensorBoard/W&B as in metrics.jsonl (x axis: epoch)
    trackers = Trackers(out, f"probe {vit.spec.name} {out.name}", to_dict(cfg), cfg, resume=False)
    try:
        _train_head(cfg, head, optimizer, tr_f, tr_y, va_f, va_y, epochs, g, metrics, trackers)
        extra = {"epochs": epochs, "feature_seconds": round(t_feat, 3), "seconds": round(time.time() - t0, 3),
                 "config": to_dict(cfg)}
        if cfg.knn:
            extra.update(knn_accuracy(tr_f, tr_y, va_f, va_y, cfg.knn, data.classes))
            trackers.scalars({"step": epochs, "knn_top1": extra["knn_top1"], "knn_top5": extra["knn_top5"]})
    finally:
        trackers.close()
    result = result_row("linear_probe", cfg, data, vit, info, read_metrics(metrics), **extra)
    write_json_atomic(out / "result.json", result)
    return result


def _train_head(cfg: ProbeConfig, head, optimizer, tr_f, tr_y, va_f, va_y, epochs: int, g, metrics: Path,
                trackers) -> None:
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(tr_f), generator=g)
        total = torch.zeros((), device=tr_f.device)
        for i in range(0, len(perm), cfg.batch_size):
            j = perm[i:i + cfg.batch_size]
            if len(j) < 2:
                continue  # a trailing batch of one: BatchNorm needs two samples (drawn again next epoch)
            loss = F.cross_entropy(head(tr_f[j]), tr_y[j])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(j)
        if epoch % max(1, epochs // 100) and epoch != epochs:
            continue  # at most ~100 lines, and the validation set is scored for those only
        head.eval()
        with torch.no_grad():
            logits = head(va_f)
            c = topk_correct(logits, va_y)
            rec = {"epoch": epoch, "train_loss": total.item() / len(perm),
                   "val_loss": F.cross_entropy(logits, va_y).item(), "top1": c[1] / len(va_y), "top5": c[5] / len(va_y)}
        append_jsonl(metrics, rec)
        trackers.scalars({"step": epoch, **rec})
