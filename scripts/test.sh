#!/usr/bin/env bash
# Set up .venv (CPU jax) if needed, lint with ruff, and run the test suite on 8 simulated
# CPU devices (tests/conftest.py). The 15 slowest tests are listed at the end, so that a CI
# log shows where the suite's time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest -q --durations=15 "$@"
