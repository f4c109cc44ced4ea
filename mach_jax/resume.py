"""The resume policy: what a checkpoint records of its run, and which runs may continue it.

``run_meta`` is the ``meta`` item every checkpoint carries beside the state
(``checkpoint.save``); ``check_resumable`` is what a run resuming from a checkpoint asks of
it before any of the state is read (``checkpoint.restore_latest``'s ``check_meta``).
"""

from __future__ import annotations

import json

from absl import logging

from mach_jax import provenance
from mach_jax.hashing import HashSpec


def run_meta(*, step: int, epoch: int, batch_in_epoch: int, steps_per_epoch: int,
             train_seconds: float, examples: int, spec: HashSpec, config,
             best: dict | None = None, decays: int = 0, target: dict | None = None) -> dict:
  """The ``meta`` item of a checkpoint: where in the data the run stands, and what it is.

  A position at the end of an epoch is recorded as the start of the next one. ``best`` is
  the best validation evaluation so far (``loop.Best.record``), whose checkpoint the keep
  policy preserves; ``decays`` how many times the run has gone back to it with a smaller
  learning rate (``config.train.decay_patience``); ``target`` the run's target record
  (``target_of``), so that a run that reached its target stops there when it resumes.
  """
  if batch_in_epoch == steps_per_epoch:
    epoch, batch_in_epoch = epoch + 1, 0
  return {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
          "shuffle_seed": config.seed, "train_seconds": train_seconds, "examples": examples,
          "hash_spec": spec.to_dict(), "config": json.loads(config.to_json()),
          "versions": provenance.library_versions(), "best": best,
          "decays": decays, "target": target}


def target_of(meta: dict | None, train_config) -> dict:
  """The run's ``train.target_metric`` record: the checkpoint's ``meta``'s if it was kept
  under the same target (a run that reached it has stopped), else one not yet reached."""
  fresh = {"metric": train_config.target_metric, "value": train_config.target_value,
           "reached": False}
  saved = (meta or {}).get("target") or {}
  same = (saved.get("metric"), saved.get("value")) == (fresh["metric"], fresh["value"])
  return dict(saved) if same else fresh


def check_resumable(meta: dict, spec: HashSpec, config, workdir: str) -> None:
  """Refuse to resume a checkpoint written by a different model or data setup.

  The mesh, the evaluation and the checkpoint settings may change between runs; the model,
  data, optimizer, seed, batch size and epoch count may not, with two exceptions: the
  learning rate, so that a run stopped by a non-finite loss can resume from its last good
  checkpoint with a saner one (logged; such a run is no longer the uninterrupted one); and
  the epoch count under a constant schedule, where no step depends on the run's length, so
  a finished run can be continued for more epochs by the same command with a larger
  ``--config.train.num_epochs``. A
  field the checkpoint's config lacks (added to the library since) counts as its default.
  """
  from mach_jax import config as config_lib  # The config's defaults (imported on use).
  if HashSpec.from_dict(meta["hash_spec"]) != spec:
    raise ValueError(f"{workdir}: the checkpoint's hash spec {meta['hash_spec']} differs from "
                     f"this run's {spec.to_dict()}; use a new --workdir")
  saved = _with_defaults(meta["config"], json.loads(config_lib.default_config().to_json()))
  now = json.loads(config.to_json())
  for c in (saved, now):  # Where parsed files are cached does not change the data.
    c.get("data", {}).pop("cache_dir", None)
  lr = saved.get("optimizer", {}).get("learning_rate"), now["optimizer"]["learning_rate"]
  if lr[0] != lr[1]:
    logging.warning("%s: resuming with learning rate %g; the checkpoint was trained with %g",
                    workdir, lr[1], lr[0])
    saved["optimizer"] = {**saved["optimizer"], "learning_rate": lr[1]}
  for key in ("model", "data", "optimizer", "seed"):
    if saved.get(key) != now.get(key):
      raise ValueError(f"{workdir}: config.{key} differs from the checkpoint's "
                       f"({saved.get(key)} vs {now.get(key)}); use a new --workdir")
  epochs = saved["train"]["num_epochs"], now["train"]["num_epochs"]
  if epochs[0] != epochs[1] and now["optimizer"].get("schedule") == "constant":
    # No step depends on the run's length: a longer (or shorter) cap continues the same run.
    logging.info("%s: continuing with num_epochs=%d; the checkpoint's run had %d", workdir,
                 epochs[1], epochs[0])
  elif epochs[0] != epochs[1]:
    raise ValueError(f"{workdir}: config.train.num_epochs differs from the checkpoint's "
                     f"({epochs[0]} vs {epochs[1]}) and the {now['optimizer'].get('schedule')} "
                     "schedule depends on it; use a new --workdir")
  for key in ("batch_size",):
    if saved["train"][key] != now["train"][key]:
      raise ValueError(f"{workdir}: config.train.{key} differs from the checkpoint's "
                       f"({saved['train'][key]} vs {now['train'][key]}); use a new --workdir")


def _with_defaults(saved: dict, defaults: dict) -> dict:
  """``saved`` with the fields it lacks taken from ``defaults`` (nested dicts merged)."""
  out = dict(saved)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = _with_defaults(out[key], value)
  return out
