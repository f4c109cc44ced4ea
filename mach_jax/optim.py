"""Optimizers: the per-repetition optax chain, its schedule, and the input table's.

Every transform here is the optimizer of ONE repetition; the train step vmaps it over the
repetition axis, so clipping, schedules and moments are strictly per repetition (a
global-norm clip over all parameters would couple the repetitions and need a collective).
The input table's row-sparse Adam lives in ``mach_jax.row_sparse_adam`` (re-exported here);
``make_table_optimizer`` builds it from a config.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mach_jax import model as model_lib
from mach_jax.row_sparse_adam import (  # The block sizes stay there (tests patch them).
  RowSparseAdamState,
  RowSparseTransform,
  dense_block_rows,
  row_sparse_adam,
  set_rows,
)

__all__ = ["RowSparseAdamState", "RowSparseTransform", "check_schedule", "dense_block_rows",
           "init_states", "learning_rate", "make_optimizer", "make_table_optimizer",
           "row_sparse_adam", "set_rows", "update_states", "warmup_steps"]


OPTIMIZERS = ("adam", "adamw", "sgd")  # config.optimizer.name
SCHEDULES = ("constant", "cosine", "piecewise")  # config.optimizer.schedule


def warmup_steps(opt, total_steps: int) -> int:
  """The cosine schedule's warm-up: ``warmup_steps`` plus ``warmup_fraction`` of the run."""
  return int(opt.warmup_steps + round(opt.warmup_fraction * total_steps))


def check_schedule(opt, total_steps: int) -> None:
  """Refuse a cosine schedule whose warm-up outlasts the run (it would never leave zero)."""
  warmup = warmup_steps(opt, total_steps)
  if opt.schedule == "cosine" and warmup >= total_steps:
    raise ValueError(f"the warm-up of {warmup} steps outlasts the run's {total_steps} steps: "
                     "lower config.optimizer.warmup_steps, or use "
                     "config.optimizer.warmup_fraction")


def learning_rate(opt, total_steps: int) -> float | optax.Schedule:
  """``config.optimizer``'s learning rate: a constant, warm-up then cosine decay, or
  piecewise constant (times each factor of ``opt.boundaries`` from its share of the run on:
  ``((fraction, factor), ...)``, as a refit replays its decays)."""
  if opt.schedule == "constant":
    return opt.learning_rate
  if opt.schedule == "piecewise":
    if not opt.boundaries or any(not 0 < f < 1 for f, _ in opt.boundaries):
      raise ValueError(f"config.optimizer.schedule='piecewise' needs config.optimizer."
                       "boundaries=((fraction of the run, factor), ...), 0 < fraction < 1; "
                       f"got {opt.boundaries!r}")
    return optax.piecewise_constant_schedule(opt.learning_rate, {
        int(round(f * total_steps)): factor for f, factor in opt.boundaries})
  if opt.schedule == "cosine":
    warmup = warmup_steps(opt, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, warmup,
                                              max(total_steps, warmup + 1))
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: expected one of {SCHEDULES}")


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """The optimizer of ONE repetition, from ``config.optimizer``.

  With ``row_sparse`` it updates every parameter but the input table (see
  ``make_table_optimizer``).
  """
  opt = config.optimizer
  lr = learning_rate(opt, total_steps)
  if opt.name == "adam":
    core = optax.adam(lr)
  elif opt.name == "adamw":
    core = optax.adamw(lr, weight_decay=opt.weight_decay)
  elif opt.name == "sgd":
    core = optax.sgd(lr, momentum=0.9)
  else:
    raise ValueError(f"config.optimizer.name={opt.name!r}: expected one of {OPTIMIZERS}")
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
  return optax.chain(*parts, core)


def init_states(tx: optax.GradientTransformation, params: dict) -> Any:
  """``tx``'s state for ``params``: vmapped over the repetitions of ``params['reps']``
  (every leaf [R, ...]); a shared input layer's part (``params['shared']``, no repetition
  axis) gets one unvmapped state, under the key 'shared'."""
  reps, shared = model_lib.split_shared(params)
  states = jax.vmap(tx.init)(reps)
  return {"reps": states, model_lib.SHARED: tx.init(shared)} if shared else states


def update_states(tx: optax.GradientTransformation, grads: dict, states: Any,
                  params: dict) -> tuple[dict, Any]:
  """``tx.update`` over a tree laid out as ``init_states`` says: (updates, new states)."""
  g_reps, g_shared = model_lib.split_shared(grads)
  p_reps, p_shared = model_lib.split_shared(params)
  if not g_shared:
    return jax.vmap(tx.update)(g_reps, states, p_reps)
  u_reps, s_reps = jax.vmap(tx.update)(g_reps, states["reps"], p_reps)
  u_shared, s_shared = tx.update(g_shared, states[model_lib.SHARED], p_shared)
  return {**u_reps, **u_shared}, {"reps": s_reps, model_lib.SHARED: s_shared}


def make_table_optimizer(config, total_steps: int) -> RowSparseTransform | None:
  """Row-sparse Adam for the input table, or None when ``config.optimizer.row_sparse`` is off.

  Raises:
    ValueError: naming the fields to change, for combinations it does not support.
  """
  opt = config.optimizer
  if not opt.row_sparse:
    for field, value, off in (("table_lr_scale", opt.table_lr_scale, 1.0),
                              ("rowwise_nu", opt.rowwise_nu, False),
                              ("table_moments_dtype", opt.table_moments_dtype, "")):
      if value != off:
        raise ValueError(f"config.optimizer.{field}={value} needs "
                         "config.optimizer.row_sparse=True")
    return None
  if opt.table_moments_dtype not in ("", "float32", "bfloat16"):
    raise ValueError(f"config.optimizer.table_moments_dtype={opt.table_moments_dtype!r}: "
                     "expected '' (the table's dtype), 'float32' or 'bfloat16'")
  problems = [f"config.optimizer.name={opt.name!r} (needs 'adam')" if opt.name != "adam" else "",
              f"config.optimizer.clip_norm={opt.clip_norm} (needs 0)" if opt.clip_norm else "",
              "config.model.dense_input=True (needs sparse input)"
              if config.model.dense_input else ""]
  problems = [p for p in problems if p]
  if problems:
    raise ValueError("config.optimizer.row_sparse=True is not supported with "
                     + ", ".join(problems))
  lr, scale = learning_rate(opt, total_steps), opt.table_lr_scale
  if scale != 1.0:
    # A row moves only in the steps whose batch holds its feature: rare features of a large
    # vocabulary get few updates, and a larger step for the table alone lets them catch up.
    base = lr
    lr = (lambda count: scale * base(count)) if callable(base) else scale * base
  return row_sparse_adam(lr, lazy=opt.lazy_rows, rowwise=opt.rowwise_nu,
                         moments_dtype=jnp.dtype(opt.table_moments_dtype or
                                                 config.model.table_dtype))
