"""Run a grid of config overrides, one training run per point; resumable.

    python -m experiments.sweep --config experiments/configs/bibtex.py \
        --sweep experiments/sweeps/r_b_grid.py --out runs/sweep_bibtex [--config.train.num_epochs=5]

A sweep file defines ``get_sweep()`` returning a list of dicts of dotted config fields to
override (``{"model.R": 8, "model.B": 32}``). Each finished point appends one JSON line to
``OUT/results.jsonl`` (the overrides, the metrics of every estimator, training time and
parameter counts); rerunning the command skips points already there, and a point that was
interrupted resumes from its own checkpoint in ``OUT/points/<id>``. Every point's config is
built and checked before the first one trains (a misspelt field or a setting out of range in
the last point is refused at once, naming the point), and a line cut short by a kill is
dropped when the sweep resumes (that point runs again, from its own folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from experiments.refusals import refusing
from mach_jax import config as config_lib, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base experiment config file.",
                                          lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().")
_OUT = flags.DEFINE_string("out", None, "Output directory (results.jsonl, points/).")
flags.mark_flags_as_required(["config", "sweep", "out"])


class SweepError(ValueError):
  """A sweep file or results file the sweep cannot use; the message names it."""


def load_sweep(path: str) -> list[dict]:
  if not os.path.isfile(path):
    raise SweepError(f"--sweep {path}: no such file")
  spec = importlib.util.spec_from_file_location("sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  points = module.get_sweep()
  if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
    raise SweepError(f"{path}: get_sweep() must return a non-empty list of dicts")
  return points


def point_id(overrides: dict) -> str:
  key = json.dumps(overrides, sort_keys=True)
  return hashlib.sha1(key.encode()).hexdigest()[:10]


def apply(config, overrides: dict):
  """A copy of ``config`` with dotted fields overridden; an unknown field is a SweepError."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for dotted, value in overrides.items():
      *parents, leaf = dotted.split(".")
      node = config
      for p in parents:
        node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
      if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise SweepError(f"sweep field {dotted!r} is not in the config")
      node[leaf] = value
  return config


def done_points(path: str) -> set[str]:
  """The ids recorded in ``path``. A last line without its newline (the sweep was killed
  while appending it) is cut off the file; any other unreadable line is refused."""
  if not os.path.exists(path):
    return set()
  with open(path, "rb") as f:
    data = f.read()
  if data and not data.endswith(b"\n"):
    data = data[:data.rfind(b"\n") + 1]
    with open(path, "r+b") as f:
      f.truncate(len(data))
  done = set()
  for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
    if not line.strip():
      continue
    try:
      done.add(json.loads(line)["id"])
    except (ValueError, KeyError, TypeError):
      raise SweepError(f"{path}:{lineno}: not a record of this sweep ({line[:80]!r}); move "
                       "the file aside to run every point again") from None
  return done


def run_sweep(config, points: list[dict], out: str) -> list[dict]:
  """Train every point not yet in ``out/results.jsonl``; returns the new records."""
  configs = []
  for i, overrides in enumerate(points):  # Every point checked before any trains.
    try:
      configs.append(apply(config, overrides))
      config_lib.check_loop(configs[-1])
    except (OSError, ValueError) as e:
      raise SweepError(f"point {i + 1} of {len(points)}, {overrides}: {e}") from None
  os.makedirs(out, exist_ok=True)
  results_path = os.path.join(out, "results.jsonl")
  done = done_points(results_path)
  records = []
  for i, (overrides, cfg) in enumerate(zip(points, configs)):
    pid = point_id(overrides)
    if pid in done:
      print(f"[{i + 1}/{len(points)}] {overrides}: done, skipped", flush=True)
      continue
    print(f"[{i + 1}/{len(points)}] {overrides}", flush=True)
    res = train.train_and_evaluate(cfg, os.path.join(out, "points", pid))
    record = {"id": pid, "overrides": overrides, "estimator": res["estimator"],
              "by_estimator": res["by_estimator"], "hash_spec": res["hash_spec"],
              "train_seconds": res["train_seconds"], "num_params": res["num_params"],
              "num_params_full_softmax": res["num_params_full_softmax"],
              "loss": cfg.model.loss, "hidden": list(cfg.model.hidden)}
    with open(results_path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    records.append(record)
  return records


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with refusing(None, SweepError):  # And a malformed data file, a full disk: the message.
    run_sweep(_CONFIG.value, load_sweep(_SWEEP.value), _OUT.value)
  print(json.dumps({"results": os.path.join(_OUT.value, "results.jsonl")}))


if __name__ == "__main__":
  app.run(main)
