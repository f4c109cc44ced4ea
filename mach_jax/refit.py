"""Refit: choose the schedule on the validation slice, then train on all the training data.

With ``config.train.refit`` a run is two runs (``train.train_and_evaluate`` calls
``select_and_refit``):

1. **Selection** (``WORKDIR/select``): the run as configured, on the training part of the
   data; its periodic evaluations on the validation slice choose the epochs, the decays and
   the stop, and it keeps its best evaluation's model. It does not read the test split.
2. **Refit** (``WORKDIR``): a fresh model (the same seed) on all the training data, the
   validation slice included, for the epochs the kept model trained, at the rates it
   trained them: the learning rate times ``train.decay_factor`` from each decay's epoch on
   (``optimizer.schedule = 'piecewise'``). No evaluation until the final one, on the test
   split, read once. Its ``results.json`` records the schedule and the selection run's
   choice and training time (``refit``).

Nothing is chosen twice and nothing on the test split: the refit replays what validation
chose, with the slice it no longer needs trained on (the peers train on every training
point). Rerunning the command resumes: a finished selection is read from its results.json.
Once the selection has kept a model its checkpoints are deleted (the model stays in
``select/model``) unless ``config.checkpoint.keep_selection``. Across processes
(``config.distributed``) every process waits for the selection's results.json before
reading it; process 0 writes and deletes.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, NamedTuple

import jax
import ml_collections

from mach_jax import checkpoint, loop, sharding

__all__ = ["SELECT_DIR", "Schedule", "check", "refit_config", "schedule_of",
           "select_and_refit", "selection_config"]

SELECT_DIR = "select"


class Schedule(NamedTuple):
  """What the kept model of a selection run trained.

  Attributes:
    epochs: epochs in all on the path to the kept model (epochs a decay discarded are not
      counted).
    decays: the epochs (of those) after which the learning rate was multiplied by
      ``train.decay_factor``, in order.
  """
  epochs: int
  decays: tuple[int, ...]


def schedule_of(selected: dict, events: list[dict], steps_per_epoch: int) -> Schedule:
  """The schedule of a selection run's kept model.

  Args:
    selected: results.json's ``selected`` (the kept evaluation's ``step``).
    events: metrics.jsonl's records, in order; the decays (``decay``, ``step``,
      ``restored_step``) are read.
    steps_per_epoch: the selection run's steps per epoch.

  Returns:
    The ``Schedule``: each decay before the kept evaluation went back to ``restored_step``
    and discarded the steps after it.

  Raises:
    ValueError: the kept model or a decay is not at the end of an epoch (the refit replays
      whole epochs).
  """
  # A resumed run logs again what it replays: a run killed after a decay, before its next
  # checkpoint, decays again on resuming (and a lost checkpoint's replay logs its decays
  # again). Each decay counts once, as last logged.
  last = {e["decay"]: e for e in events if "decay" in e}
  discarded, decays = 0, []
  for e in sorted(last.values(), key=lambda e: e["decay"]):
    if e["step"] <= selected["step"]:
      decays.append(e["restored_step"] - discarded)
      discarded += e["step"] - e["restored_step"]
  steps = [selected["step"] - discarded, *decays]
  if any(s % steps_per_epoch for s in steps):
    raise ValueError(f"a refit replays whole epochs, but the kept model or a decay is at "
                     f"step {[s for s in steps if s % steps_per_epoch]} of epochs of "
                     f"{steps_per_epoch} steps: evaluate at epoch ends "
                     "(config.eval.every_epochs, eval.every_steps=0)")
  return Schedule(steps[0] // steps_per_epoch, tuple(s // steps_per_epoch for s in decays))


def check(config) -> None:
  """Refuse a refit that has nothing to choose its schedule on."""
  if not config.data.validation_fraction:
    raise ValueError("config.train.refit=True replays the schedule a validation slice chose: "
                     "set config.data.validation_fraction > 0 (or refit=False)")
  if config.eval.every_steps:
    raise ValueError(f"config.train.refit=True replays whole epochs: evaluate at epoch ends "
                     f"(config.eval.every_steps={config.eval.every_steps} -> 0, "
                     "eval.every_epochs=1)")


def _copy(config) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config.to_dict())


def selection_config(config) -> ml_collections.ConfigDict:
  """The selection run's config: ``config`` without the refit, not reading the test split."""
  c = _copy(config)
  c.train.refit, c.eval.final_test = False, False
  return c


def refit_config(config, schedule: Schedule) -> ml_collections.ConfigDict:
  """The refit's config: all the training points, ``schedule``'s epochs and rates.

  No validation slice, no periodic evaluation (it would read the test split), no decay on
  plateau and no early stopping: the piecewise-constant rate replays the decays, each at
  its epoch's share of the run's steps (an epoch of the refit is a little longer).
  """
  c = _copy(config)
  c.train.refit = False
  c.data.validation_fraction = 0.0
  c.train.update(num_epochs=schedule.epochs, decay_patience=0, early_stopping_patience=0,
                 target_metric="")
  c.eval.update(every_epochs=0, every_steps=0)
  c.checkpoint.best_metric = ""
  if schedule.decays:
    c.optimizer.schedule = "piecewise"
    c.optimizer.boundaries = tuple((e / schedule.epochs, config.train.decay_factor)
                                   for e in schedule.decays)
  return c


def _read(workdir: str) -> tuple[dict, list[dict]]:
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    events = [json.loads(line) for line in f if line.strip()]
  return results, events


def select_and_refit(config, workdir: str,
                     run: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
  """Selection in ``workdir/select``, then the refit in ``workdir`` (module docstring).

  Args:
    config: a config with ``train.refit`` and a validation slice.
    workdir: the run's folder; the refit's model folder and results.json are its own.
    run: ``train.train_and_evaluate`` (called with ``refit`` off).

  Returns:
    The refit's results, with ``refit``: the schedule, the selection's ``selected``, its
    training seconds and its folder.
  """
  check(config)
  select_dir = os.path.join(workdir, SELECT_DIR)
  if not sharding.on_every_process(os.path.exists(os.path.join(select_dir, "results.json"))):
    run(selection_config(config), select_dir)
    sharding.on_every_process(True)  # (Process 0 has written what every process reads next.)
  selection, events = _read(select_dir)
  main = jax.process_index() == 0  # (Every process reads; process 0 writes and deletes.)
  if not selection.get("selected"):
    raise ValueError(f"{select_dir}/results.json: no validation evaluation was kept, so "
                     "there is no schedule to refit; raise config.train.num_epochs and "
                     f"delete {select_dir} to run the selection again")
  checkpoints = os.path.join(select_dir, checkpoint.CHECKPOINT_DIR)
  if not config.checkpoint.keep_selection and os.path.isdir(checkpoints) and main:
    shutil.rmtree(checkpoints)  # Its kept model is in select/model; it is not resumed.
  steps_per_epoch = -(-selection["num_train"] // config.train.batch_size)
  schedule = schedule_of(selection["selected"], events, steps_per_epoch)
  results = run(refit_config(config, schedule), workdir)
  results["selected"] = selection["selected"]
  results["refit"] = {"epochs": schedule.epochs, "decays": list(schedule.decays),
                      "select_dir": select_dir,
                      "select_train_seconds": selection["train_seconds"],
                      "select_peak_rss_bytes": selection["peak_rss_bytes"],
                      "num_validation": selection["num_validation"]}
  if main:
    loop.write_results(workdir, results)
  return results
