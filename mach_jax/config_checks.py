"""Refusing training settings that are out of range or contradict each other, before any
data is read: each error names the fields to change."""

from __future__ import annotations

import math
import os

from mach_jax import bag, data as data_lib, decode, inference, losses, optim
from mach_jax.hashing import FAMILIES, IDENTITY, HashSpec

TABLE_DTYPES = ("float32", "bfloat16")
BACKGROUND = ("auto", "always", "never")  # checkpoint.background: saves written meanwhile.


def check_loop(config) -> None:
  """Refuse training settings out of range, or that contradict each other (before any data
  is read).

  Raises:
    ValueError: naming the fields to change.
  """
  check_init_from(config)
  ev, tc, ck = config.eval, config.train, config.checkpoint
  for field, value, ok, want in _ranges(config):  # (Else: a ZeroDivisionError, lr < 0 climbs.)
    if not ok:
      raise ValueError(f"config.{field}={value!r}: expected {want}")
  for field, value, choices in _choices(config):
    if value not in choices:
      raise ValueError(f"config.{field}={value!r}: expected one of {choices}")
  if config.data.name == "queries":  # The featurizer's own checks, before contradictions.
    data_lib.featurizer(config.data)
  if unknown := [e for e in ev.estimators if e not in decode.ESTIMATORS]:
    raise ValueError(f"config.eval.estimators: {unknown} unknown; expected among "
                     f"{decode.ESTIMATORS}")
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


def _ranges(config):
  """(field, value, whether it is in range, the range in words) of every numeric setting."""
  ev, tc, ck, m, o = config.eval, config.train, config.checkpoint, config.model, config.optimizer
  vf = config.data.validation_fraction

  def finite(v):
    return math.isfinite(v) and v >= 0

  at_least = lambda low: f"an integer >= {low}"  # noqa: E731
  return (
      ("model.R", m.R, m.R >= 0, "an integer >= 1 (0: derived from the data)"),
      ("model.B", m.B, m.B == 0 or m.B >= 2, "an integer >= 2 (0: derived from the data)"),
      ("model.hidden", tuple(m.hidden), len(m.hidden) >= 1 and min(m.hidden) >= 1,
       "one width or more, each >= 1"),
      ("model.input_dim", m.input_dim, m.input_dim >= -1,
       "0 (off), -1 (derived from the data) or an integer >= 1"),
      ("model.hash_seed", m.hash_seed, m.hash_seed >= 0, at_least(0)),
      ("optimizer.learning_rate", o.learning_rate, finite(o.learning_rate),
       "a finite number >= 0"),
      ("optimizer.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, at_least(0)),
      ("optimizer.warmup_fraction", o.warmup_fraction, 0 <= o.warmup_fraction < 1, "0 <= f < 1"),
      ("optimizer.clip_norm", o.clip_norm, finite(o.clip_norm), "a finite number >= 0"),
      ("optimizer.weight_decay", o.weight_decay, finite(o.weight_decay),
       "a finite number >= 0"),
      ("optimizer.table_lr_scale", o.table_lr_scale, finite(o.table_lr_scale),
       "a finite number >= 0"),
      ("train.batch_size", tc.batch_size, tc.batch_size >= 1, at_least(1)),
      ("train.num_epochs", tc.num_epochs, tc.num_epochs >= 1, at_least(1)),
      ("train.log_every_steps", tc.log_every_steps, tc.log_every_steps >= 0, at_least(0)),
      ("train.input_dropout", tc.input_dropout, 0 <= tc.input_dropout < 1, "0 <= p < 1"),
      ("train.hidden_dropout", tc.hidden_dropout, 0 <= tc.hidden_dropout < 1, "0 <= p < 1"),
      ("train.early_stopping_patience", tc.early_stopping_patience,
       tc.early_stopping_patience >= 0, at_least(0)),
      ("train.decay_patience", tc.decay_patience, tc.decay_patience >= 0, at_least(0)),
      ("train.max_decays", tc.max_decays, tc.max_decays >= 0, at_least(0)),
      ("train.decay_factor", tc.decay_factor, not tc.decay_patience
       or 0 < tc.decay_factor < 1, "0 < f < 1"),
      ("eval.k", ev.k, ev.k >= 1, at_least(1)),
      ("eval.batch_size", ev.batch_size, ev.batch_size >= 1, at_least(1)),
      ("eval.every_epochs", ev.every_epochs, ev.every_epochs >= 0, at_least(0)),
      ("eval.every_steps", ev.every_steps, ev.every_steps >= 0, at_least(0)),
      ("eval.subset", ev.subset, ev.subset >= 0, "an integer >= 0 (0: every point)"),
      ("eval.memory_budget_mb", ev.memory_budget_mb, ev.memory_budget_mb >= 1, at_least(1)),
      ("eval.candidates_m", ev.candidates_m, ev.candidates_m >= 1, at_least(1)),
      ("eval.min_count", ev.min_count, ev.min_count >= 1, at_least(1)),
      ("data.validation_fraction", vf, 0 <= vf < 1, "0 <= f < 1"),
      ("data.buffer_size", config.data.buffer_size, config.data.buffer_size >= 1, at_least(1)),
      ("data.cache_mb", config.data.cache_mb, finite(config.data.cache_mb),
       "a finite number >= 0 (0: no cache)"),
      ("checkpoint.keep", ck.keep, ck.keep >= 1, at_least(1)),
      ("checkpoint.every_steps", ck.every_steps, ck.every_steps >= 0, at_least(0)))


def _choices(config):
  """(field, value, its choices) of every setting that names one of a few choices."""
  m, o = config.model, config.optimizer
  return (("model.loss", m.loss, (*losses.LOSSES, "auto")),
          ("model.hash_family", m.hash_family, (*FAMILIES, IDENTITY)),
          ("model.embedding_bag", m.embedding_bag, bag.MODES),
          ("model.table_dtype", m.table_dtype, TABLE_DTYPES),
          ("optimizer.name", o.name, optim.OPTIMIZERS),
          ("optimizer.schedule", o.schedule, optim.SCHEDULES),
          ("optimizer.table_moments_dtype", o.table_moments_dtype, ("", *TABLE_DTYPES)),
          ("checkpoint.background", config.checkpoint.background, BACKGROUND),
          ("eval.decode", config.eval.decode, (*decode.DECODE_METHODS, "auto")))


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
