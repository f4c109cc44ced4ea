"""Refusing training settings that are out of range or contradict each other, before any
data is read: each error names the fields to change."""

from __future__ import annotations

import math

from mach_jax import decode, inference


def check_loop(config) -> None:
  """Refuse training settings out of range, or that contradict each other (before any data
  is read).

  Raises:
    ValueError: naming the fields to change.
  """
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
