"""The `egoscale` command: parse, call the stage, print a summary.

Each stage lives in its own package and is also a Python function with the same arguments.
User errors (`EgoscaleError`) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys

from egoscale import __version__
from egoscale.errors import EgoscaleError

DESCRIPTION = """\
egoscale: masked-autoencoder scaling studies on human-like video.

Pipeline (each stage reads the files the previous one wrote):
  ingest      folders of videos -> WebDataset shards of JPEG frames + manifest.json
  subset      data-size subsets: contiguous stretches of the frame order, per fraction x seed
  pretrain    MAE pretraining (also under torchrun: DDP, FSDP), resumable
  visualize   original | masked | reconstruction grid from an MAE checkpoint
  finetune    few-shot finetuning on a labelled folder (permissive / stringent), top-1/top-5
  probe       linear probe and k-NN on frozen features (cached)
  models      list the ViT family: shapes, parameters, GFLOPs per image
  convert     checkpoint <-> safetensors
  inspect     what a checkpoint holds (kind, model, size, training state)
"""


# --- models ----------------------------------------------------------------------------------
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the ViT family with parameters and GFLOPs",
                       description="List every registered ViT: width, depth, heads, MLP, patch, "
                                   "parameters (classifier form: encoder + BN/Linear head) and "
                                   "forward GFLOPs per image (2 FLOPs per multiply-add).")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="models to show (registry names like vit_h14, or ViT-H/14); default: all")
    p.add_argument("--img-size", type=int, default=None,
                   help="image side in px for params/GFLOPs (default: each model's own)")
    p.add_argument("--num-classes", type=int, default=1000,
                   help="classes of the head counted in the parameters; 0 = encoder only (default: 1000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    import json

    import torch

    from egoscale.errors import ConfigError
    from egoscale.models import build_vit, count_params, get_spec, list_models, vit_gflops

    specs = [get_spec(n) for n in args.names] if args.names else list_models()
    rows = []
    for spec in specs:
        size = args.img_size or spec.img_size
        if size % spec.patch_size:
            if args.names:
                raise ConfigError(f"{spec.name}: image size {size} is not divisible by patch size {spec.patch_size}")
            continue  # listing all: skip members that cannot take this size
        with torch.device("meta"):  # counts without allocating billions of parameters
            model = build_vit(spec, img_size=size, num_classes=args.num_classes)
        rows.append(dict(name=spec.name, width=spec.width, depth=spec.depth, heads=spec.heads,
                         mlp=spec.mlp_dim, patch=spec.patch_size, img_size=size,
                         params=count_params(model), gflops=round(vit_gflops(spec, size), 3), note=spec.note))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'name':<12}{'width':>6}{'depth':>6}{'heads':>6}{'mlp':>6}{'patch':>6}{'img':>5}" \
           f"{'params':>15}{'GFLOPs':>10}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<12}{r['width']:>6}{r['depth']:>6}{r['heads']:>6}{r['mlp']:>6}{r['patch']:>6}"
              f"{r['img_size']:>5}{r['params']:>15,}{r['gflops']:>10.2f}  {r['note']}")
    return 0


# --- ingest / subset ------------------------------------------------------------------------
def _add_ingest(sub) -> None:
    from egoscale.config import add_dataclass_args
    from egoscale.data.ingest import IngestConfig

    p = sub.add_parser(
        "ingest", help="videos -> frame shards + manifest.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Decode every video under each --source folder, sample frames at exact times k/fps, "
                    "resize, encode JPEG, and write WebDataset shards (frames-000000.tar, ...) with a "
                    "manifest.json (per video: duration, frames, shards, status; per source: hours; failures "
                    "with reasons).\n\nResumable: re-run the same command after a crash or kill. Unreadable "
                    "files are listed, not fatal (exit 1 only if nothing could be ingested, or with --strict).",
        epilog="example:\n  egoscale ingest --source saycam=/data/saycam --source ego4d=/data/ego4d \\\n"
               "      --out /data/frames --fps 1 --short-side 256 --workers 16\n"
               "cluster: run with --part I/N for I = 0..N-1 (e.g. a SLURM array), then\n"
               "  egoscale ingest --merge --out /data/frames")
    add_dataclass_args(p, IngestConfig)
    p.add_argument("--merge", action="store_true", help="combine the part manifests in --out into manifest.json")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args) -> int:
    from egoscale.config import build
    from egoscale.data.ingest import IngestConfig, ingest, merge

    if args.merge:
        merge(getattr(args, "out", "frames"))
        return 0
    cfg = build(IngestConfig, {k: v for k, v in vars(args).items() if k not in ("func", "command", "merge")})
    man = ingest(cfg)
    t = man["total"]
    print(f"{t['videos']} videos, {t['frames']} frames, {t['hours']:.3f} h in {len(man['shards'])} shards "
          f"-> {cfg.out}; {t['failed']} failed, {t['skipped']} non-video files skipped")
    for f in man["failed"][:10]:
        print(f"  failed: {f['source']}/{f['path']}: {f['reason']} ({f['frames']} frames kept)")
    if len(man["failed"]) > 10:
        print(f"  ... and {len(man['failed']) - 10} more (see manifest.json)")
    if t["frames"] == 0:
        return 1
    return 1 if (cfg.strict and t["failed"]) else 0


def _add_subset(sub) -> None:
    from egoscale.config import add_dataclass_args
    from egoscale.data.subset import SubsetConfig

    p = sub.add_parser(
        "subset", help="data-size subsets (contiguous stretches) of an ingest",
        description="For each fraction x seed, pick ceil(fraction x frames) consecutive frames of the ingest's "
                    "global order (source, video, time) starting at a seeded position, and write a subset file "
                    "(shard/sample ranges, hours, sources) that pretraining reads directly.",
        epilog="example: egoscale subset /data/frames --fractions 1,0.1,0.01,0.001,0.0001 --seeds 1,2,3 "
               "--out /data/subsets")
    add_dataclass_args(p, SubsetConfig)
    p.set_defaults(func=_run_subset)


def _run_subset(args) -> int:
    from egoscale.config import build
    from egoscale.data.subset import SubsetConfig, make_subsets

    cfg = build(SubsetConfig, {k: v for k, v in vars(args).items() if k not in ("func", "command")})
    make_subsets(cfg)
    return 0


# --- pretrain / visualize -------------------------------------------------------------------
def _add_pretrain(sub) -> None:
    from egoscale.config import add_dataclass_args
    from egoscale.train.pretrain import PretrainConfig

    p = sub.add_parser(
        "pretrain", help="MAE pretraining on frame shards",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain a masked autoencoder on frames from `egoscale ingest` (optionally a subset). "
                    "Runs on CPU, one GPU (bf16), or many under torchrun. Resumes from OUT/checkpoint.pt.",
        epilog="examples:\n"
               "  egoscale pretrain --model vit_h14 --img-size 476 --data /data/frames \\\n"
               "      --subset /data/frames/subsets/0.01_s2.json --out runs/vith14@476_0.01_2 \\\n"
               "      --batch-size 34 --lr 1e-4 --budget-hours 48\n"
               "  torchrun --nproc-per-node 8 -m egoscale pretrain ...      (DDP over one node)\n"
               "  torchrun --nnodes 4 ... -m egoscale pretrain ... --fsdp   (sharded, big models)")
    add_dataclass_args(p, PretrainConfig)
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from egoscale.config import build
    from egoscale.train.pretrain import PretrainConfig, pretrain

    cfg = build(PretrainConfig, {k: v for k, v in vars(args).items() if k not in ("func", "command")})
    import os

    s = pretrain(cfg)
    if s and "samples" in s and os.environ.get("RANK", "0") == "0":
        print(f"{s['steps']} steps, {s['samples']} images, final loss {s.get('final_loss', float('nan')):.4f}, "
              f"{s['seconds']:.0f} s -> {cfg.out}")
    return 0


def _add_visualize(sub) -> None:
    p = sub.add_parser("visualize", help="MAE reconstructions as a PNG grid",
                       description="For N images: original | masked input | reconstruction (visible patches "
                                   "from the input, masked ones predicted), one row each.")
    p.add_argument("checkpoint", help="MAE checkpoint (file or run folder)")
    p.add_argument("--images", required=True, help="folder of images, ingest folder, or folder of shards")
    p.add_argument("--out", default="reconstructions.png", help="PNG to write (default: reconstructions.png)")
    p.add_argument("-n", type=int, default=8, help="images (default: 8)")
    p.add_argument("--mask-ratio", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--seed", type=int, default=0, help="mask seed (default: 0)")
    p.set_defaults(func=_run_visualize)


def _run_visualize(args) -> int:
    from egoscale.train.visualize import visualize

    print(f"wrote {visualize(args.checkpoint, args.images, args.out, args.n, args.seed, args.mask_ratio)}")
    return 0


# --- finetune / probe -----------------------------------------------------------------------
def _add_eval(sub, name: str) -> None:
    from egoscale.config import add_dataclass_args
    from egoscale.evaluate.finetune import FinetuneConfig
    from egoscale.evaluate.probe import ProbeConfig

    cls = FinetuneConfig if name == "finetune" else ProbeConfig
    text = ("Finetune the whole encoder with a BatchNorm+Linear head on a random fraction of a labelled "
            "folder (ImageNet layout) and report top-1/top-5 on the whole val folder after every epoch. "
            "Resumable; runs under torchrun like pretraining."
            if name == "finetune" else
            "Extract frozen class-token features once (cached, resumable), train a BatchNorm+Linear "
            "classifier on them, and report top-1/top-5 (and k-NN) on the val folder.")
    short = ("few-shot finetuning, top-1/top-5 per epoch" if name == "finetune"
             else "linear probe and k-NN on frozen features")
    p = sub.add_parser(name, help=short, description=text, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"example:\n  egoscale {name} --checkpoint runs/vith14@476_1.0_1 \\\n"
                              "      --train /data/imagenet/train --val /data/imagenet/val \\\n"
                              f"      --condition permissive --out evals/{name}")
    add_dataclass_args(p, cls)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    import os

    from egoscale.config import build

    if args.command == "finetune":
        from egoscale.evaluate.finetune import FinetuneConfig as cls
        from egoscale.evaluate.finetune import finetune as run
    else:
        from egoscale.evaluate.probe import ProbeConfig as cls
        from egoscale.evaluate.probe import probe as run
    cfg = build(cls, {k: v for k, v in vars(args).items() if k not in ("func", "command")})
    r = run(cfg)
    if os.environ.get("RANK", "0") == "0":
        extra = f", k-NN top-1 {r['knn_top1']:.2%}" if "knn_top1" in r else ""
        print(f"{r['eval']} {r['model']} ({r['condition']}, {r['n_train']} images): top-1 {r['top1']:.2%}, "
              f"top-5 {r['top5']:.2%} (best, epoch {r['best_epoch']}){extra} -> {cfg.out}/result.json")
    return 0


# --- convert / inspect -----------------------------------------------------------------------
def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="checkpoint <-> safetensors",
                       description="Convert a checkpoint between torch (.pt/.pth) and .safetensors; "
                                   "the direction follows DST's suffix. Loading never runs code.")
    p.add_argument("src", help="checkpoint file, run folder, or released identifier (e.g. vits14_0.01_1)")
    p.add_argument("dst", help="output file (.safetensors or .pt/.pth)")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from egoscale.models.checkpoint import export_safetensors, import_safetensors, resolve_checkpoint

    src = resolve_checkpoint(args.src)
    out = export_safetensors(src, args.dst) if args.dst.endswith(".safetensors") else import_safetensors(src, args.dst)
    print(f"wrote {out}")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="describe a checkpoint",
                       description="Print what a checkpoint holds: MAE or classifier, model shape, "
                                   "image size, parameters, and any training state (step, config).")
    p.add_argument("checkpoint", help="file, run folder, or released identifier")
    p.add_argument("--finetuned", action="store_true", help="for a released identifier: the finetuned file")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args) -> int:
    from egoscale.models.checkpoint import infer_spec, read_checkpoint, resolve_checkpoint, split_state
    from egoscale.models.registry import ViTSpec

    path = resolve_checkpoint(args.checkpoint, finetuned=args.finetuned)
    obj = read_checkpoint(path)
    enc, head, dec = split_state(obj["model"])
    meta = obj.get("egoscale") or {}
    spec = ViTSpec(**meta["spec"]) if "spec" in meta else infer_spec(enc, str(path))
    n_enc = sum(v.numel() for k, v in enc.items() if v.is_floating_point())
    kind = "MAE (encoder + decoder)" if dec else ("classifier" if head else "encoder")
    print(f"file        {path}")
    print(f"kind        {kind}{'' if meta else ' (released / foreign layout)'}")
    print(f"model       {spec.name}: width {spec.width}, depth {spec.depth}, heads {spec.heads}, "
          f"mlp {spec.mlp_dim}, patch {spec.patch_size}, image {spec.img_size} px")
    print(f"encoder     {n_enc:,} parameters")
    if head:
        print(f"head        {', '.join(f'{k} {tuple(v.shape)}' for k, v in head.items() if v.ndim)}")
    if dec:
        print(f"decoder     {sum(obj['model'][k].numel() for k in dec):,} parameters ({len(dec)} tensors)")
    extra = sorted(k for k in obj if k not in ("model", "egoscale"))
    if extra:
        print(f"also holds  {', '.join(extra)}" + (f" (step {obj['step']})" if "step" in obj else ""))
    return 0


# --- main ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egoscale", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"egoscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_ingest, _add_subset, _add_pretrain, _add_visualize):
        add(sub)
    _add_eval(sub, "finetune")
    _add_eval(sub, "probe")
    for add in (_add_models, _add_convert, _add_inspect):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except EgoscaleError as e:
        print(f"egoscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"egoscale {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
