"""Run one benchmark configuration in a fresh process and read back its result.

A fresh process per configuration is what lets a benchmark set XLA_FLAGS (simulated device
counts) before jax starts, and what makes max RSS a per-configuration figure.
"""

from __future__ import annotations

import json
import subprocess
import sys

_TAG = "RESULT "


def emit(result: dict) -> None:
  """Called by the worker: print its result where ``run`` finds it."""
  print(_TAG + json.dumps(result), flush=True)


def run(module: str, argv: list[str], what: str, env: dict | None = None) -> dict:
  """``python -m module --worker *argv`` -> the dict it emitted; exits loudly on failure."""
  out = subprocess.run([sys.executable, "-m", module, "--worker", *argv], env=env,
                       capture_output=True, text=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith(_TAG)]
  if out.returncode or not lines:
    raise SystemExit(f"{module} worker for {what} failed (exit {out.returncode}):\n"
                     f"{out.stderr[-3000:]}")
  return json.loads(lines[-1][len(_TAG):])
