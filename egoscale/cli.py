"""The `egoscale` command: parse the flags of one stage and hand its config to the stage.

Every command is a row of `STAGES`: its name, the module that implements it, the config
dataclass whose fields are its flags, and a one-line help. The module's `main(cfg)` runs the
stage and prints its summary. The config dataclasses live in modules without torch, so a
command's `--help` and a bad flag or setting answer at once; the stage's own module (which may
load torch) is imported only once its settings are checked. User errors (`EgoscaleError`) print
one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from egoscale import __version__
from egoscale.errors import EgoscaleError


class Stage(NamedTuple):
    module: str  # implements `main(cfg) -> int`
    config: str  # the config dataclass: its fields are the flags
    help: str
    # the config's module when it is not `module`: the stages that load torch keep their settings
    # in one that does not
    config_in: str | None = None

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.config_in or self.module), self.config)


STAGES: dict[str, Stage] = {
    "demo": Stage("egoscale.demo", "DemoConfig", "the whole study on the built-in world, on a CPU, in minutes"),
    "world": Stage("egoscale.world.world", "WorldConfig", "render the built-in world: video + a labelled set"),
    "ingest": Stage("egoscale.data.ingest", "IngestConfig",
                    "folders of videos -> WebDataset shards of JPEG frames + manifest.json"),
    "subset": Stage("egoscale.data.subset", "SubsetConfig",
                    "data-size subsets: contiguous stretches of the frame order, per fraction x seed"),
    "pretrain": Stage("egoscale.train.pretrain", "PretrainConfig",
                      "MAE pretraining (also under torchrun: DDP, FSDP), resumable", "egoscale.train.config"),
    "visualize": Stage("egoscale.train.visualize", "VisualizeConfig",
                       "original | masked | reconstruction grid from an MAE checkpoint", "egoscale.train.config"),
    "finetune": Stage("egoscale.evaluate.finetune", "FinetuneConfig",
                      "few-shot finetuning on a labelled folder (permissive / stringent), top-1/top-5",
                      "egoscale.evaluate.config"),
    "probe": Stage("egoscale.evaluate.probe", "ProbeConfig", "linear probe and k-NN on frozen features (cached)",
                   "egoscale.evaluate.config"),
    "results": Stage("egoscale.scaling.results", "ResultsConfig",
                     "the results table: collect result.json files, or import the paper's logs"),
    "fit": Stage("egoscale.scaling.fit", "FitConfig",
                 "scaling-law forms with robust fits, held-out validation and bootstrap intervals"),
    "extrapolate": Stage("egoscale.scaling.extrapolate", "ExtrapolateConfig",
                         "predictions far from the data; the scale that reaches a target (e.g. human)"),
    "plan": Stage("egoscale.scaling.plan", "PlanConfig",
                  "which runs to pay for next: the most narrowing of one far answer per GPU-hour"),
    "report": Stage("egoscale.scaling.report", "ReportConfig", "report.html / report.md with plots from a fit"),
    "sweep": Stage("egoscale.sweep.sweep", "SweepConfig",
                   "run a grid (models x sizes x data x evaluations) locally or on SLURM; `sweep status`"),
    "models": Stage("egoscale.models.listing", "ModelsConfig", "list the ViT family: shapes, parameters, GFLOPs"),
    "convert": Stage("egoscale.models.convert", "ConvertConfig", "checkpoint <-> safetensors"),
    "inspect": Stage("egoscale.models.inspection", "InspectConfig",
                     "what a checkpoint holds (kind, model, size, training state, provenance)"),
}

DESCRIPTION = ("egoscale: masked-autoencoder scaling studies on human-like video.\n\n"
               "Pipeline (each stage reads the files the previous one wrote):\n"
               + "".join(f"  {name:<12}{s.help}\n" for name, s in STAGES.items())
               + "\n`egoscale COMMAND --help` explains each command.")


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, like every other egoscale error (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_stage(sub, name: str, stage: Stage) -> None:
    """The full parser of one command, built from its config dataclass."""
    from egoscale.config import add_dataclass_args

    cls = stage.config_class()
    p = sub.add_parser(name, help=stage.help, description=(cls.__doc__ or stage.help).strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, cls)
    p.set_defaults(stage=stage)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (only=COMMAND) one with just that command's options built.

    Building a command's options imports its config's module, so `main` builds only the command
    being run; the others are listed by name and help.
    """
    parser = _Parser(prog="egoscale", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"egoscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, stage in STAGES.items():
        if only is None or name == only:
            _add_stage(sub, name, stage)
        else:
            sub.add_parser(name, help=stage.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in STAGES else "")
    args = parser.parse_args(argv)
    stage: Stage | None = getattr(args, "stage", None)
    if stage is None:
        parser.print_help()
        return 0
    try:
        from egoscale.config import build

        values = {k: v for k, v in vars(args).items() if k not in ("stage", "command")}
        cfg = build(stage.config_class(), values)  # unset flags are absent: the defaults apply
        return importlib.import_module(stage.module).main(cfg) or 0
    except EgoscaleError as e:
        print(f"egoscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"egoscale {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
