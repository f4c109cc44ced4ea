#!/usr/bin/env bash
# Set up .venv and train + evaluate MACH on the embedded synthetic catalogue.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.train --config experiments/configs/synthetic.py \
  --workdir "${WORKDIR:-runs/synthetic}" "$@"
