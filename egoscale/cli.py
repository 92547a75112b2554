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
  demo        the whole study on the built-in world, on a CPU, in minutes
  world       render the built-in world: video + a labelled recognition set
  ingest      folders of videos -> WebDataset shards of JPEG frames + manifest.json
  subset      data-size subsets: contiguous stretches of the frame order, per fraction x seed
  pretrain    MAE pretraining (also under torchrun: DDP, FSDP), resumable
  visualize   original | masked | reconstruction grid from an MAE checkpoint
  finetune    few-shot finetuning on a labelled folder (permissive / stringent), top-1/top-5
  probe       linear probe and k-NN on frozen features (cached)
  results     the results table: collect result.json files, or import the paper's logs
  fit         scaling-law forms with robust fits, held-out validation and bootstrap intervals
  extrapolate predictions far from the data; the scale that reaches a target (e.g. human)
  report      report.html / report.md with plots from a fit
  sweep       run a grid (models x sizes x data x evaluations) locally or on SLURM; `sweep status`
  models      list the ViT family: shapes, parameters, GFLOPs per image
  convert     checkpoint <-> safetensors
  inspect     what a checkpoint holds (kind, model, size, training state)
"""


def _config(args, cls):
    """The stage config from parsed flags (argparse leaves unset flags out: the dataclass defaults apply)."""
    from egoscale.config import build

    return build(cls, {k: v for k, v in vars(args).items() if k not in ("func", "command", "merge")})


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
    from egoscale.data.ingest import IngestConfig, ingest, merge

    if args.merge:
        merge(getattr(args, "out", "frames"))
        return 0
    cfg = _config(args, IngestConfig)
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
    from egoscale.data.subset import SubsetConfig, make_subsets

    cfg = _config(args, SubsetConfig)
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
    from egoscale.train.pretrain import PretrainConfig, pretrain

    cfg = _config(args, PretrainConfig)
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


    if args.command == "finetune":
        from egoscale.evaluate.finetune import FinetuneConfig as cls
        from egoscale.evaluate.finetune import finetune as run
    else:
        from egoscale.evaluate.probe import ProbeConfig as cls
        from egoscale.evaluate.probe import probe as run
    cfg = _config(args, cls)
    r = run(cfg)
    if os.environ.get("RANK", "0") == "0":
        extra = f", k-NN top-1 {r['knn_top1']:.2%}" if "knn_top1" in r else ""
        print(f"{r['eval']} {r['model']} ({r['condition']}, {r['n_train']} images): top-1 {r['top1']:.2%}, "
              f"top-5 {r['top5']:.2%} (best, epoch {r['best_epoch']}){extra} -> {cfg.out}/result.json")
    return 0


# --- results / fit / extrapolate / report -----------------------------------------------------
def _add_results(sub) -> None:
    p = sub.add_parser("results", help="build the results table (CSV)",
                       description="Build the results table: one row per evaluated run.")
    rs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = rs.add_parser("collect", help="gather result.json files under a folder")
    c.add_argument("runs_dir")
    c.add_argument("--out", default="results.csv")
    i = rs.add_parser("import-logs", help="read the paper's published finetuning logs",
                      description="Read {arch}_{fraction}_{seed}_log.txt files (one JSON object per line with "
                                  "test_acc1, test_acc5, epoch, n_parameters); hours = fraction x --total-hours.")
    i.add_argument("log_dir")
    i.add_argument("--total-hours", type=float, required=True, help="hours of the full data set (paper: ~5000)")
    i.add_argument("--out", default="results.csv")
    p.set_defaults(func=_run_results)


def _run_results(args) -> int:
    from egoscale.scaling.table import collect, import_logs, write_table

    rows = collect(args.runs_dir) if args.action == "collect" else import_logs(args.log_dir, args.total_hours)
    write_table(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def _add_fit(sub) -> None:
    from egoscale.config import add_dataclass_args
    from egoscale.scaling.analysis import FitConfig

    p = sub.add_parser("fit", help="fit scaling-law forms, validated on held-out runs",
                       description="Fit accuracy as a function of parameters N, hours D and resolution R with "
                                   "several forms (robust Huber loss, many starts), validate each on held-out runs, "
                                   "bootstrap intervals (seeds resampled within cells), and choose by held-out error.",
                       epilog="example: egoscale fit results.csv --metric top1 --form auto "
                              "--holdout data_fraction=1.0 --out fit.json")
    add_dataclass_args(p, FitConfig)
    p.set_defaults(func=_run_fit)


def _run_fit(args) -> int:
    from egoscale.scaling.analysis import FitConfig, run_fit

    cfg = _config(args, FitConfig)
    run_fit(cfg)
    print(f"wrote {cfg.out}")
    return 0


def _add_extrapolate(sub) -> None:
    p = sub.add_parser("extrapolate", help="predict far from the data; scale needed for a target",
                       description="Predictions with 90% intervals per form at a given scale (--at), or the common "
                                   "factor k by which N, D and pixels of the largest run must grow to reach a target "
                                   "(--target T --scale-together). Targets: a number, or 'human' (top-5 0.949, "
                                   "Russakovsky et al. 2015).",
                       epilog="examples:\n  egoscale extrapolate fit.json --at params=2.5e9,hours=20000,resolution=952"
                              "\n  egoscale extrapolate fit.json --target human --scale-together",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fit")
    p.add_argument("--at", help="params=N,hours=D,resolution=R")
    p.add_argument("--target", help="accuracy in (0, 1) or a named target (human)")
    p.add_argument("--scale-together", action="store_true", help="scale N, D and pixels by one factor k")
    p.add_argument("--budget-flops", type=float, default=None,
                   help="with --target: the cheapest (N, D, R) reaching it under the compute model "
                        "(egoscale/scaling/extrapolate.py: train_flops), whether it fits this budget, and the frontier")
    p.add_argument("--epochs", type=float, default=1.0, help="compute model: passes over the D hours (default: 1)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_extrapolate)


def _run_extrapolate(args) -> int:
    import json

    from egoscale.errors import ConfigError
    from egoscale.scaling.extrapolate import at, load_fit, parse_at, resolve_target, scale_together

    fit = load_fit(args.fit)
    if args.at:
        res = at(fit, *parse_at(args.at))
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            for name, r in res.items():
                print(f"{name:<18} {fit['metric']} {r['pred']:.3f}  90% CI [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]  "
                      f"90% PI [{r['pi'][0]:.3f}, {r['pi'][1]:.3f}]{'  <- chosen' if name == fit['chosen'] else ''}")
        return 0
    if not args.target:
        raise ConfigError("give --at params=...,hours=...,resolution=... or --target T --scale-together")
    value, source = resolve_target(fit, args.target)
    if args.budget_flops is not None:
        from egoscale.scaling.extrapolate import cheapest

        res = cheapest(fit, value, args.budget_flops, epochs=args.epochs)
        if args.json:
            print(json.dumps(res, indent=2))
            return 0
        print(f"target {fit['metric']} {value:.3f} ({source}); budget {args.budget_flops:.3g} FLOPs, "
              f"{args.epochs:g} epoch(s) over the data:")
        for name, r in res["forms"].items():
            if "unreachable" in r:
                print(f"  {name:<18} unreachable: {r['unreachable']}")
                continue
            edge = f"; at the edge of the searched {', '.join(r['at_search_edge'])}" if r.get("at_search_edge") else ""
            iv = r.get("flops_interval")
            ivs = ""
            if iv and iv[0] is not None:
                upper = f"{iv[1]:.3g}" if iv[1] is not None else "unbounded"
                ivs = (f"; {fit.get('level', 0.9):.0%} interval [{iv[0]:.3g}, {upper}], "
                       f"P(within budget) {r['p_within_budget']:.0%}")
            print(f"  {name:<18} cheapest: {r['params']:.3g} params, {r['hours']:.3g} h, {r['resolution']:.0f} px = "
                  f"{r['flops']:.3g} FLOPs ({'within' if r['within_budget'] else 'OVER'} budget{ivs}); "
                  f"frontier of {len(r['frontier'])} model sizes in --json{edge}")
        return 0
    if not args.scale_together:
        raise ConfigError("--target needs --scale-together or --budget-flops C")
    res = scale_together(fit, value)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    b = res["base"]
    print(f"target {fit['metric']} {value:.3f} ({source}); from the largest run N={b['params']:.3g}, "
          f"D={b['hours']:.3g} h, R={b['resolution']:.0f} px, scaling N, D, pixels by k:")
    for name, r in res["forms"].items():
        mark = "  <- chosen" if name == fit["chosen"] else ""
        if "unreachable" in r:
            print(f"  {name:<18} unreachable: {r['unreachable']}{mark}")
            continue
        iv = r.get("k_interval")
        ivs = f"90% CI k in [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else r.get("note", "")
        print(f"  {name:<18} k={r['k']:.3g}: {r['params']:.3g} params, {r['hours']:.3g} h, {r['resolution']:.0f} px; "
              f"{ivs}{mark}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML/Markdown report with plots from a fit",
                       description="Write report.html (self-contained) and report.md with PNG plots: accuracy vs "
                                   "hours/params/resolution with fitted curves, held-out predictions, and the "
                                   "extrapolation with interval bands for every form.")
    p.add_argument("fit")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--target", default=None, help="target accuracy or 'human' (default: human for top5 fits)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from egoscale.scaling.report import report

    print(f"wrote {report(args.fit, args.out, args.target)}")
    return 0


# --- world / sweep / demo -------------------------------------------------------------------
def _add_world(sub) -> None:
    from egoscale.config import add_dataclass_args
    from egoscale.world.world import WorldConfig

    p = sub.add_parser("world", help="render the built-in world (video + labelled set)",
                       description="Render a procedural first-person world: a camera wandering through rooms of "
                                   "objects of K categories, written as mp4 files, plus a labelled train/val set of "
                                   "the same categories (new instances). Deterministic by --seed.")
    add_dataclass_args(p, WorldConfig)
    p.set_defaults(func=_run_world)


def _run_world(args) -> int:
    from egoscale.world.world import WorldConfig, make_world

    make_world(_config(args, WorldConfig))
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of pretraining runs x evaluations",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run every cell of a grid file (see egoscale/sweep/grid.py and "
                                   "configs/paper_grid.yaml): finished cells are skipped, failed ones recorded and the "
                                   "rest go on; OUT/results.csv is updated as evaluations finish.",
                       epilog="examples:\n  egoscale sweep grid.yaml --out runs/ --dry-run\n"
                              "  egoscale sweep grid.yaml --out runs/ --gpus 8\n"
                              "  egoscale sweep grid.yaml --out runs/ --backend slurm\n  egoscale sweep status runs/")
    p.add_argument("grid", help="grid YAML file, or 'status'")
    p.add_argument("folder", nargs="?", help="with 'status': the sweep's output folder")
    p.add_argument("--out", default="runs", help="output folder (default: runs)")
    p.add_argument("--backend", default="local", choices=["local", "slurm"])
    p.add_argument("--gpus", type=int, default=0, help="local: run this many cells at once, one per GPU")
    p.add_argument("--parallel", type=int, default=1,
                   help="local, CPU: run this many cells at once, splitting the cores between them")
    p.add_argument("--dry-run", action="store_true", help="print the cells and the estimated compute; run nothing")
    p.add_argument("--print-jobs", action="store_true", help="slurm: print the job specifications, submit nothing")
    p.set_defaults(func=_run_sweep)


def _run_sweep(args) -> int:
    import json

    from egoscale.sweep.grid import load_grid
    from egoscale.sweep.runner import dry_run, run_local, slurm_jobs, status, submit_slurm

    if args.grid == "status":
        folder = args.folder or args.out
        groups = status(folder)
        for k in ("done", "running", "failed", "pending"):
            print(f"{k:<8} {len(groups.get(k, []))}")
            if k in ("failed", "running"):
                for c in groups.get(k, []):
                    print(f"         {c}")
        return 0
    grid = load_grid(args.grid)
    if args.dry_run:
        dry_run(grid)
        return 0
    if args.backend == "slurm":
        jobs = slurm_jobs(grid, args.out)
        if args.print_jobs:
            print(json.dumps(jobs, indent=2))
            return 0
        submit_slurm(jobs, args.out)
        return 0
    counts = run_local(grid, args.out, parallel=args.parallel, gpus=args.gpus)
    return 1 if counts["failed"] else 0


def _add_demo(sub) -> None:
    from egoscale.config import add_dataclass_args
    from egoscale.demo import DemoConfig

    p = sub.add_parser("demo", help="the whole study on the built-in world, in minutes on a CPU",
                       description="world -> ingest -> subsets -> sweep (pretrain, finetune, probe) -> fit -> "
                                   "extrapolate -> report, all under --out; re-running reuses finished stages.")
    add_dataclass_args(p, DemoConfig)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from egoscale.demo import DemoConfig, demo

    demo(_config(args, DemoConfig))
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
def _commands() -> dict:
    """Command -> function adding its full parser, in the order of DESCRIPTION."""
    adders = {"demo": _add_demo, "world": _add_world, "ingest": _add_ingest, "subset": _add_subset,
              "pretrain": _add_pretrain, "visualize": _add_visualize,
              "finetune": lambda sub: _add_eval(sub, "finetune"), "probe": lambda sub: _add_eval(sub, "probe"),
              "results": _add_results, "fit": _add_fit, "extrapolate": _add_extrapolate, "report": _add_report,
              "sweep": _add_sweep, "models": _add_models, "convert": _add_convert, "inspect": _add_inspect}
    return adders


def _one_line_help() -> dict[str, str]:
    lines = [ln.split(None, 1) for ln in DESCRIPTION.splitlines() if ln.startswith("  ")]
    return {w[0]: w[1].strip() for w in lines if len(w) == 2}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (only=COMMAND) one with just that command's options built.

    Building a stage's options imports its config dataclass and with it torch (seconds), so
    `main` builds only the command being run; the others are listed by name and help.
    """
    parser = argparse.ArgumentParser(prog="egoscale", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"egoscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    helps = _one_line_help()
    for name, add in _commands().items():
        if only is None or name == only:
            add(sub)
        else:
            sub.add_parser(name, help=helps.get(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in _commands() else "")
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
