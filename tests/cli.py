"""`egoscale ARGS` run inside the test process.

The tests of what a command prints and the code it exits with run it here rather than in a new
interpreter, which would import torch again (seconds per call on a small machine). What needs a
real process (a kill, torchrun, what a fresh start imports) still starts one.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from egoscale.cli import main


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def egoscale(*args) -> Ran:
    """Run `egoscale ARGS` as the command line would: its exit code and what it printed to stdout and
    stderr (argparse's usage errors and --help exit through SystemExit, as they do there)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())
