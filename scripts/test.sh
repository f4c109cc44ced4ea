#!/usr/bin/env bash
# Set up .venv (CPU jax) if needed and run the test suite on 8 simulated CPU devices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
