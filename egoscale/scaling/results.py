"""`egoscale results`: the results table, one row per evaluated run, as CSV.

Produced by the sweep, by `collect` (result.json files under a folder) and by `import_logs`
(the finetuning logs the paper's authors published).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from egoscale.config import opt
from egoscale.errors import ConfigError, DataError
from egoscale.fileio import write_text_atomic
from egoscale.models.registry import RELEASED_FORMAT, get_spec, parse_released

COLUMNS = ["model", "params", "img_size", "patch_size", "data_fraction", "data_hours", "data_frames", "seed",
           "pretrain_seed", "pretrain_steps", "pretrain_images", "pretrain_flops", "eval", "condition",
           "label_fraction", "eval_epochs", "top1", "top5", "top1_last", "top5_last", "baseline", "source", "note"]
NUMERIC = {"params", "img_size", "patch_size", "data_fraction", "data_hours", "data_frames", "seed", "pretrain_seed",
           "pretrain_steps", "pretrain_images", "pretrain_flops", "label_fraction", "eval_epochs", "top1", "top5",
           "top1_last", "top5_last"}


@dataclass
class ResultsConfig:
    """Build the results table (CSV), one row per evaluated run.

examples:
  egoscale results collect runs/eval --out results.csv
  egoscale results import-logs humanlike-vits/logs/finetuning_logs --total-hours 5000 --out results.csv

`import-logs` reads the finetuning logs {arch}_{fraction}_{seed}_log.txt (one JSON object per line with
test_acc1, test_acc5, epoch, n_parameters; hours = fraction x --total-hours) and, where it finds them,
the pretraining logs of the same runs (--pretrain-logs; default: a pretraining_logs folder beside
SOURCE) for each run's steps and learning rates."""

    action: str = opt("collect", "collect (result.json files under SOURCE) or import-logs (the paper's logs "
                      "in SOURCE)", positional=True, required=True, metavar="ACTION",
                      choices=["collect", "import-logs"])
    source: str = opt(".", "folder to read", positional=True, required=True, metavar="SOURCE")
    total_hours: float | None = opt(None, "import-logs: hours of the full data set (paper: ~5000)")
    pretrain_logs: str | None = opt(None, "import-logs: the pretraining logs' folder (default: SOURCE/../"
                                    "pretraining_logs when it exists)")
    out: str = opt("results.csv", "table to write")

    def __post_init__(self):
        if self.action == "import-logs" and (self.total_hours is None or self.total_hours <= 0):
            raise ConfigError("import-logs needs --total-hours H > 0 (hours of the whole data set; paper: ~5000)")


def main(cfg: ResultsConfig) -> int:
    if cfg.action == "collect":
        rows = collect(cfg.source)
    else:
        rows = import_logs(cfg.source, cfg.total_hours, pretrain_logs=cfg.pretrain_logs)
        for line in describe_import(rows):
            print(line)
    write_table(rows, cfg.out)
    print(f"wrote {len(rows)} rows to {cfg.out}")
    return 0


def write_table(rows: list[dict], path: str | Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    write_text_atomic(path, buf.getvalue())
    return Path(path)


def read_table(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such results table")
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"params", "data_hours", "img_size"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: not a results table (missing columns {sorted(missing)})")
        for n, r in enumerate(reader, 2):
            row = {}
            for k, v in r.items():
                if k in NUMERIC:
                    try:
                        row[k] = float(v) if v not in ("", None) else None
                    except ValueError:
                        raise DataError(f"{path}:{n}: column {k!r} is not a number: {v!r}") from None
                else:
                    row[k] = v
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: the results table has no rows")
    return rows


def row_from_result(result: dict, source: str) -> dict:
    """A results-table row from an evaluation's result.json."""
    return {"model": result.get("model"), "params": result.get("params"), "img_size": result.get("img_size"),
            "patch_size": result.get("patch_size"), "data_fraction": result.get("data_fraction"),
            "data_hours": result.get("data_hours"), "data_frames": result.get("data_frames"),
            "pretrain_seed": result.get("pretrain_seed"),
            "pretrain_steps": result.get("pretrain_steps"),
            "pretrain_images": result.get("pretrain_images"), "pretrain_flops": result.get("pretrain_flops"),
            "eval": result.get("eval"), "condition": result.get("condition"),
            "label_fraction": result.get("label_fraction"), "eval_epochs": result.get("epochs"),
            "top1": result.get("top1"), "top5": result.get("top5"),
            "top1_last": result.get("top1_last"), "top5_last": result.get("top5_last"),
            # "random" for an untrained encoder's evaluation (steps 0), empty for a pretrained one
            "baseline": result.get("baseline"),
            "seed": result.get("init_seed") if result.get("baseline") else result.get("data_seed"), "source": source}


def collect(runs_dir: str | Path, files: list[Path] | None = None) -> list[dict]:
    """Rows from every result.json under `runs_dir` (sorted by path), or from `files` under it."""
    runs_dir = Path(runs_dir)
    files = sorted(runs_dir.rglob("result.json")) if files is None else sorted(files)
    if not files:
        raise DataError(f"{runs_dir}: no result.json files found")
    rows = []
    for f in files:
        try:
            rows.append(row_from_result(json.loads(f.read_text()), str(f.relative_to(runs_dir))))
        except json.JSONDecodeError as e:
            raise DataError(f"{f}: not valid JSON ({e})") from None
    return rows


def import_logs(log_dir: str | Path, total_hours: float, frames_per_hour: float = 3600.0,
                pretrain_logs: str | Path | None = None) -> list[dict]:
    """Rows from the paper's published finetuning logs: `{arch}_{fraction}_{seed}_log.txt`, one JSON
    object per line with test_acc1/test_acc5 (percent), epoch and n_parameters (head included).

    top1 and top5 are each the best over the epochs, as the paper reports them (not top-5 at the
    best top-1 epoch); `eval_epochs` is how many epochs the log holds. Each run's pretraining log,
    where found, gives `pretrain_steps` and, in `note`, its learning rates when they changed.
    """
    log_dir = Path(log_dir)
    files = sorted(p for p in log_dir.rglob("*_log.txt") if parse_released(p.name, log=True))
    if not files:
        raise DataError(f"{log_dir}: no logs named {RELEASED_FORMAT}_log.txt")
    if pretrain_logs is None and (log_dir.parent / "pretraining_logs").is_dir():
        pretrain_logs = log_dir.parent / "pretraining_logs"
    pre = ({p.name: p for p in Path(pretrain_logs).rglob("*_log.txt")} if pretrain_logs else {})
    rows = []
    for f in files:
        rid = parse_released(f.name, log=True)
        spec = get_spec(rid.model)
        epochs = _finetune_epochs(f)
        last = max(epochs, key=lambda e: e[0])
        head = spec.width * 1000 + 1000  # the 1000-way Linear; BatchNorm(affine=False) has none
        hours = rid.fraction * total_hours
        row = {"model": spec.name, "params": epochs[0][3] - head, "img_size": rid.img_size,
               "patch_size": spec.patch_size, "data_fraction": rid.fraction, "data_hours": hours,
               "data_frames": round(hours * frames_per_hour), "seed": rid.seed, "eval": "finetune",
               "condition": "permissive", "label_fraction": 0.02, "eval_epochs": len(epochs),
               "top1": max(e[1] for e in epochs), "top5": max(e[2] for e in epochs),
               "top1_last": last[1], "top5_last": last[2], "source": f.name}
        if f.name in pre:
            steps, phases = read_pretrain_log(pre[f.name])
            row["pretrain_steps"] = steps
            if len(phases) > 1:
                row["note"] = "pretraining lr " + ", then ".join(
                    f"{lr:.2g} for {n:,} steps" if n else f"{lr:.2g} for less than one logging interval"
                    for lr, n in phases)
        rows.append(row)
    return rows


def _finetune_epochs(f: Path) -> list[tuple[int, float, float, int]]:
    """(epoch, top-1, top-5, parameters) of every line of a finetuning log."""
    epochs = []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            epochs.append((int(rec["epoch"]), float(rec["test_acc1"]) / 100, float(rec["test_acc5"]) / 100,
                           int(rec["n_parameters"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else type(e).__name__
            raise DataError(f"{f}:{n}: not a log line with test_acc1, test_acc5, epoch, n_parameters "
                            f"({what})") from None
    if not epochs:
        raise DataError(f"{f}: empty log")
    return epochs


def read_pretrain_log(f: Path) -> tuple[int, list[tuple[float, int]]]:
    """A paper pretraining log: its steps, and (learning rate, steps) in the order they ran.

    The log holds one JSON line per logging interval ("it", "train_loss", "train_lr"), and the
    paper's runs were 48-hour jobs resubmitted from their last checkpoint: each job's lines start
    again at it 0. A run's steps are the sum over its jobs of each job's last logged "it" (a job's
    steps after its last line, less than one logging interval, are not in the log)."""
    jobs: list[list[dict]] = []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            it, lr = int(rec["it"]), float(rec["train_lr"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise DataError(f"{f}:{n}: not a pretraining log line with it and train_lr") from None
        if not jobs or it <= jobs[-1][-1]["it"]:
            jobs.append([])
        jobs[-1].append({"it": it, "lr": lr})
    if not jobs:
        raise DataError(f"{f}: empty log")
    phases: list[tuple[float, int]] = []
    for job in jobs:
        lr, steps = float(f"{job[-1]['lr']:.3g}"), job[-1]["it"]
        if phases and phases[-1][0] == lr:
            phases[-1] = (lr, phases[-1][1] + steps)
        else:
            phases.append((lr, steps))
    return sum(n for _, n in phases), phases


def describe_import(rows: list[dict]) -> list[str]:
    """What a reader of the imported table should know: runs evaluated over fewer epochs than the
    others (their best is a best of fewer), and runs whose pretraining learning rate changed."""
    lines = []
    most = max(r["eval_epochs"] for r in rows)
    short: dict[tuple, list[str]] = {}
    for r in rows:
        if r["eval_epochs"] < most:
            short.setdefault((r["model"], r["img_size"], r["eval_epochs"]), []).append(r["source"])
    for (model, size, n), files in sorted(short.items()):
        lines.append(f"{model} @{size} px: {len(files)} finetuning log(s) stop after {n} epochs (the others run "
                     f"{most}): their best is over fewer epochs")
    lines += [f"{r['source']}: {r['note']}" for r in rows if r.get("note")]
    missing = sum(r.get("pretrain_steps") is None for r in rows)
    if missing:
        lines.append(f"{missing} run(s) without a pretraining log: pretrain_steps left empty")
    return lines
