#!/usr/bin/env bash
# One entry point that works on a fresh machine:
#   ./run.sh test            lint (ruff) + the test suite
#   ./run.sh ARGS...         `egoscale ARGS...` (e.g. ./run.sh models)
# Creates ./.venv and installs egoscale (editable, with test extras) when missing or when
# pyproject.toml changed since the last install; otherwise reuses it. EGOSCALE_VENV overrides
# the location; PYTHON picks the interpreter (Python >= 3.10).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${EGOSCALE_VENV:-.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.egoscale-install-stamp"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[run.sh] creating virtual environment in $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[run.sh] installing egoscale and its dependencies into $VENV (first run: a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
    echo "$want" > "$stamp"
fi

if [ "${1:-}" = "test" ]; then
    shift
    "$VENV/bin/ruff" check egoscale tests benchmarks
    # No network in tests: anything touching the Hugging Face Hub must use local files.
    HF_HUB_OFFLINE=1 exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/egoscale" "$@"
