"""Refusing training settings that are out of range or contradict each other, before any
data is read: each error names the fields to change."""

from __future__ import annotations

import math
import os

from mach_jax import decode, inference
from mach_jax.hashing import IDENTITY, HashSpec


def check_loop(config) -> None:
  """Refuse training settings out of range, or that contradict each other (before any data
  is read).

  Raises:
    ValueError: naming the fields to change.
  """
  check_init_from(config)
  ev, tc, ck, m = config.eval, config.train, config.checkpoint, config.model
  lr, vf = config.optimizer.learning_rate, config.data.validation_fraction
  for field, value, ok, want in (  # (Else a batch of 0 or H = 0 divides by zero, lr < 0 climbs.)
      ("train.batch_size", tc.batch_size, tc.batch_size >= 1, "an integer >= 1"),
      ("eval.k", ev.k, ev.k >= 1, "an integer >= 1"),
      ("data.validation_fraction", vf, 0 <= vf < 1, "0 <= f < 1"),
      ("optimizer.learning_rate", lr, math.isfinite(lr) and lr >= 0, "a finite number >= 0"),
      ("model.hidden", tuple(m.hidden), min(m.hidden, default=1) >= 1, "widths >= 1"),
      ("train.input_dropout", tc.input_dropout, 0 <= tc.input_dropout < 1, "0 <= p < 1"),
      ("train.hidden_dropout", tc.hidden_dropout, 0 <= tc.hidden_dropout < 1, "0 <= p < 1"),
      ("train.decay_factor", tc.decay_factor, not tc.decay_patience
       or 0 < tc.decay_factor < 1, "0 < f < 1")):
    if not ok:
      raise ValueError(f"config.{field}={value!r}: expected {want}")
  if unknown := [e for e in ev.estimators if e not in decode.ESTIMATORS]:
    raise ValueError(f"config.eval.estimators: {unknown} unknown; expected among "
                     f"{decode.ESTIMATORS}")
  if ev.decode not in (*decode.DECODE_METHODS, "auto"):
    raise ValueError(f"config.eval.decode={ev.decode!r}: expected one of "
                     f"{(*decode.DECODE_METHODS, 'auto')}")
  if ev.estimator not in ev.estimators:
    raise ValueError(f"config.eval.estimator={ev.estimator!r} is not among "
                     f"config.eval.estimators={tuple(ev.estimators)}: add it there")
  reported = {f"{m}@{j}" for m in ("P", "nDCG", "R", "PSP", "PSnDCG")
              for j in inference.eval_ks(ev.k)}
  for field, metric in (("train.target_metric", tc.target_metric),
                        ("checkpoint.best_metric", ck.best_metric)):
    if metric and metric not in reported:
      raise ValueError(f"config.{field}={metric!r} is not a metric the evaluations report "
                       f"with config.eval.k={ev.k}: expected one of {sorted(reported)}")
  if tc.target_metric and not (ev.every_epochs or ev.every_steps):
    raise ValueError(f"config.train.target_metric={tc.target_metric!r} needs periodic "
                     "evaluations: set config.eval.every_epochs or config.eval.every_steps")
  if config.data.validation_fraction and not (
      (ev.every_epochs or ev.every_steps) and ck.best_metric):
    raise ValueError("config.data.validation_fraction > 0 selects the model on periodic "
                     "evaluations by config.checkpoint.best_metric: set eval.every_epochs or "
                     "eval.every_steps, and best_metric (e.g. 'P@1')")
  if (config.data.name != "synthetic" and not config.data.test
      and not config.data.validation_fraction and (ev.every_epochs or ev.every_steps)):
    raise ValueError("config.data.test is empty and config.data.validation_fraction is 0: "
                     "the periodic evaluations have nothing to read: pass --config.data.test="
                     "PATH, set validation_fraction > 0, or eval.every_epochs=0")
  if tc.decay_patience and not (config.data.validation_fraction and ck.enabled):
    raise ValueError(f"config.train.decay_patience={tc.decay_patience} goes back to the best "
                     "validation evaluation's state, which the checkpoint store keeps: set "
                     "config.data.validation_fraction > 0 and config.checkpoint.enabled=True "
                     "(or decay_patience=0)")


def check_init_from(config) -> None:
  """Refuse a ``train.init_from`` model folder that is missing, damaged, stored for
  serving, or of a model the config does not describe, before any data is read (a large
  log takes minutes to read). The fields the data decides (K, and D, R, B or input_dim
  when the config leaves them to it) are checked against the folder once it is read.

  Raises:
    FileNotFoundError, ValueError: naming the folder and the fields to change.
  """
  path = config.train.init_from
  if not path:
    return
  from mach_jax import bundle  # (Here, not above: bundle imports config, which imports us.)
  path = os.path.abspath(path)
  info = bundle.read_info(path)
  if info["table_storage"] != "float32":
    raise ValueError(f"config.train.init_from={path}: its table is stored as "
                     f"{info['table_storage']}, for serving; start a run from the float32 "
                     "folder it was quantized from")
  saved, m = HashSpec.from_dict(info["hash_spec"]), config.model
  hidden = tuple(info["config"].get("model", {}).get("hidden", ()))
  checks = [("model.hash_family", m.hash_family, saved.family, True),
            ("model.hidden", tuple(m.hidden), hidden, bool(hidden)),
            ("model.input_dim", m.input_dim, saved.input_dim, m.input_dim >= 0)]
  if saved.family != IDENTITY:
    checks += [("model.R", m.R, saved.R, m.R != 0), ("model.B", m.B, saved.B, m.B != 0),
               ("model.hash_seed", m.hash_seed, saved.seed, True),
               ("model.input_sign", m.input_sign, saved.input_sign, saved.input_dim > 0)]
  if differ := [f"config.{field}={want!r} (the folder's: {got!r})"
                for field, want, got, fixed in checks if fixed and want != got]:
    raise ValueError(f"config.train.init_from={path}: its model cannot start this run: "
                     f"{'; '.join(differ)}; only a larger catalogue K may differ: set these "
                     "as the folder has them, or start from another folder")
