"""Choose the learning rate on the validation slice, then train: one command, no test peeking.

    python -m experiments.tune --config experiments/configs/text.py --workdir DIR \
        --config.data.train=LOG --config.data.test=LOG --config.data.catalogue=ITEMS

1. Probes: for each learning rate of ``--learning_rates``, train ``--probe_epochs`` epochs
   on the training part of the data (``data.validation_fraction`` of it held out), evaluate
   on the validation slice only (``eval.final_test = False``: the test split is not read).
2. The learning rate whose probe reached the best validation ``checkpoint.best_metric``
   (ties: the smaller rate) trains the full run: up to ``train.num_epochs`` epochs with early
   stopping on the same validation slice, keeping its best epoch (``mach_jax.train``).
3. That run's model is evaluated on the test split once; its figures are the result.

Writes DIR/probe_lr<rate>/ (each probe's run), DIR/final/ (the chosen run: results.json,
model/) and DIR/tune.json (every probe's validation metrics, the choice, the final
results). Rerunning the command resumes where it stopped: a finished probe is read from its
results.json, an unfinished run resumes from its checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments.refusals import refusing
from mach_jax import sharding, train, whole_file

_CONFIG = _WORKDIR = _RATES = _PROBE_EPOCHS = None  # Flags: see _flags().


def _flags():
  """Defined only when run as a script, so that importing ``tune`` (tests) defines none."""
  global _CONFIG, _WORKDIR, _RATES, _PROBE_EPOCHS
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where the probes and the final run go.")
  _RATES = flags.DEFINE_list("learning_rates", ["1e-3", "3e-3", "1e-2"],
                             "Learning rates tried by the probes.")
  _PROBE_EPOCHS = flags.DEFINE_integer("probe_epochs", 1, "Epochs of each probe.")
  flags.mark_flags_as_required(["config", "workdir"])


class TuneSettingError(ValueError):
  """A flag or setting ``tune`` cannot work with; the message names it and what to change."""


def tune(config: ml_collections.ConfigDict, workdir: str, learning_rates, probe_epochs: int,
         run=train.train_and_evaluate) -> dict:
  """Probe ``learning_rates`` on validation, train the best one, evaluate it on test once.

  Args:
    config: a config with ``data.validation_fraction`` > 0 and periodic evaluations.
    workdir: the folder of the probes and the final run.
    learning_rates: the rates probed.
    probe_epochs: epochs per probe (at most ``config.train.num_epochs``).
    run: ``train_and_evaluate`` (a stand-in in tests).

  Returns:
    The contents of ``workdir/tune.json``.
  """
  if not config.data.validation_fraction:
    raise TuneSettingError("experiments.tune chooses on a validation slice: set "
                           "config.data.validation_fraction > 0 (e.g. 0.02)")
  if not 1 <= probe_epochs <= config.train.num_epochs:
    raise TuneSettingError(f"--probe_epochs={probe_epochs}: expected 1 to "
                           f"config.train.num_epochs={config.train.num_epochs}")
  metric = config.checkpoint.best_metric
  probes = []
  for lr in sorted(_rate(r) for r in learning_rates):  # (sorted: every rate checked first.)
    c = ml_collections.ConfigDict(config.to_dict())
    c.optimizer.learning_rate = lr
    c.train.num_epochs = probe_epochs
    c.eval.final_test, c.train.refit = False, False  # A probe is scored on validation.
    res = _finished(os.path.join(workdir, f"probe_lr{lr:g}"), c) or run(
        c, os.path.join(workdir, f"probe_lr{lr:g}"))
    probes.append({"learning_rate": lr, "validation": res["selected"]["metrics"],
                   "train_seconds": res["train_seconds"]})
  chosen = max(probes, key=lambda p: p["validation"][metric])  # First (smallest) on ties.
  c = ml_collections.ConfigDict(config.to_dict())
  c.optimizer.learning_rate = chosen["learning_rate"]
  final = run(c, os.path.join(workdir, "final"))
  out = {"metric": metric, "probe_epochs": probe_epochs, "probes": probes,
         "learning_rate": chosen["learning_rate"],
         "probe_seconds": sum(p["train_seconds"] for p in probes),
         "final": {k: final[k] for k in ("P@1", "P@3", "P@5", "selected", "train_seconds",
                                         "num_params", "num_params_full_softmax",
                                         "peak_rss_bytes", "refit") if k in final}}
  if "refit" in final:  # The final run's time counts its selection run's.
    out["final"]["train_seconds"] += final["refit"]["select_train_seconds"]
  if jax.process_index() == 0:  # (Across processes each one returns it; one writes it.)
    with whole_file.replacing(os.path.join(workdir, "tune.json")) as f:
      json.dump(out, f, indent=2)
  return out


def _rate(text) -> float:
  try:
    lr = float(text)
  except ValueError:
    lr = math.nan
  if not 0 < lr < math.inf:
    raise TuneSettingError(f"--learning_rates: {text!r} is not a positive number")
  return lr


def _finished(workdir: str, config) -> dict | None:
  """The results of a probe that already ran to its end with this config, else None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    res = json.load(f)
  same = [(res["config"]["optimizer"]["learning_rate"], config.optimizer.learning_rate),
          (res["config"]["train"]["num_epochs"], config.train.num_epochs),
          (res["config"]["data"]["train"], config.data.train)]
  if any(a != b for a, b in same):
    raise TuneSettingError(f"{path}: a finished probe of another configuration ({same}); use "
                           "a new --workdir")
  return res


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with refusing(None, TuneSettingError):  # Also a malformed file, a full disk: the message.
    out = sharding.ending_at_once_on_error(
        lambda: tune(_CONFIG.value, _WORKDIR.value, _RATES.value, _PROBE_EPOCHS.value))
  for p in out["probes"]:
    print(f"probe lr {p['learning_rate']:g}: validation {out['metric']} "
          f"{p['validation'][out['metric']]:.4f}")
  f = out["final"]
  print(f"chosen lr {out['learning_rate']:g}; test P@1 {f['P@1']:.4f}  P@3 {f['P@3']:.4f}  "
        f"P@5 {f['P@5']:.4f}; {f['train_seconds'] + out['probe_seconds']:.0f} s of training "
        "in all")
  print(json.dumps({"tune": os.path.join(_WORKDIR.value, "tune.json")}))


if __name__ == "__main__":
  _flags()
  sys.exit(app.run(main))
