#!/usr/bin/env bash
# Set up .venv (CPU jax) if needed, lint with ruff, and run the test suite on 8 simulated
# CPU devices (tests/conftest.py) in two pytest-xdist worker processes that share one
# compilation cache (docs/testing.md; `-n 0` after the script's name runs it in one). The
# 15 slowest tests are listed at the end, so that a CI log shows where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest -q -n 2 --dist worksteal --durations=15 "$@"
