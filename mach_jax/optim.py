"""Optimizers: the per-repetition optax chain, its schedule, and row-sparse Adam.

Every transform here is the optimizer of ONE repetition; the train step vmaps it over the
repetition axis, so clipping, schedules and moments are strictly per repetition (a
global-norm clip over all parameters would couple the repetitions and need a collective).

Row-sparse ("lazy") Adam is for the input table: a batch touches only the rows of the
features it contains, yet a dense Adam step reads and writes every row of the [D, H] table
and of both moment tables. ``row_sparse_adam`` gathers the touched rows, applies Adam to
them and scatters them back; rows the batch did not touch keep their parameters *and* their
moments (their moments do not decay), as in TensorFlow's LazyAdam. The bias correction uses
the global step count. On the first step it equals dense Adam exactly (an untouched row has
zero gradient and zero moments, so dense Adam does not move it either); afterwards the two
differ on rows that go untouched.

References:
  Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mach_jax import model as model_lib

__all__ = ["RowSparseAdamState", "RowSparseTransform", "check_schedule", "init_states",
           "learning_rate", "make_optimizer", "make_table_optimizer", "row_sparse_adam",
           "update_states", "warmup_steps"]


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
  """``config.optimizer``'s learning rate: a constant, or warm-up then cosine decay."""
  if opt.schedule == "constant":
    return opt.learning_rate
  if opt.schedule == "cosine":
    warmup = warmup_steps(opt, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, warmup,
                                              max(total_steps, warmup + 1))
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: expected constant|cosine")


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
    raise ValueError(f"config.optimizer.name={opt.name!r}: expected adam|adamw|sgd")
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


class RowSparseAdamState(NamedTuple):
  """State of row-sparse Adam for one repetition's [D, H] table."""
  count: jax.Array  # int32 []
  mu: jax.Array  # [D, H]
  nu: jax.Array  # [D, H], or [D, 1] with one second moment per row (``rowwise``).
  # Moments of a 16-bit float dtype are stored as their uint16 bits (``row_sparse_adam``).


class RowSparseTransform(NamedTuple):
  """An optax-style set of functions for a table updated by rows.

  Attributes:
    init: ``table [D, H] -> state``.
    update: ``(table [D, H], rows int32 [U], row_grads [U, H], state) -> (table, state)``;
      row ids >= D are padding and change nothing.
    dense_update: ``(table [D, H], touched bool [D], grads [D, H], state) -> (table,
      state)``: the same update of the touched rows, as one pass over the whole table
      (cheaper than gathering and scattering rows when a batch touches most of them).
    update_at: ``(tables [R, D, H], r, rows [U], row_grads [U, H], states, current=None)
      -> (tables, states)``: ``update`` of repetition r of stacked tables and their
      stacked states (every leaf [R, ...]), scattered in place; ``current`` [U, H], the
      rows as the caller already gathered them (padding rows: any finite values), spares
      gathering them again.
    dense_update_at: ``(tables [R, D, H], r, touched bool [D], grads [D, H], states) ->
      (tables, states)``: ``dense_update`` of repetition r of stacked tables and their
      stacked states (every leaf [R, ...]), written in place.
    lazy: True when untouched rows stay as they are; False when every row's moments decay
      and every row moves each step (Adam itself): the step then always updates by
      ``dense_update``, whatever its batch touches.
  """
  init: Callable[[jax.Array], RowSparseAdamState]
  update: Callable[[jax.Array, jax.Array, jax.Array, RowSparseAdamState],
                   tuple[jax.Array, RowSparseAdamState]]
  dense_update: Callable[[jax.Array, jax.Array, jax.Array, RowSparseAdamState],
                         tuple[jax.Array, RowSparseAdamState]]
  update_at: Callable[[jax.Array, jax.Array, jax.Array, jax.Array, RowSparseAdamState],
                      tuple[jax.Array, RowSparseAdamState]]
  dense_update_at: Callable[[jax.Array, jax.Array, jax.Array, jax.Array, RowSparseAdamState],
                            tuple[jax.Array, RowSparseAdamState]]
  lazy: bool = True


# Bytes of one float32 array's block in ``dense_update_at`` (table, moments and gradient
# each read or written a block at a time). On XLA:CPU blocks of 128 KB (128 rows at
# H = 256) stay in a core's cache between the moments' writes and the step that reads
# them back: the text config's step on text WordNet took 218-266 ms against 317-359 ms
# with 2 MB blocks (blocks of 32 to 128 rows within the noise; `experiments/bench/NOTES.md`,
# 2-core Intel Xeon, 2026-12-06). Other platforms keep the 2 MB blocks (not measured there).
DENSE_BLOCK_BYTES_CPU = 128 << 10
DENSE_BLOCK_BYTES = 2 << 20


def dense_block_rows(H: int, platform: str | None = None) -> int:
  """Rows per block of ``dense_update_at`` for tables of width H on ``platform`` (default
  ``jax.default_backend()``)."""
  block = (DENSE_BLOCK_BYTES_CPU if (platform or jax.default_backend()) == "cpu"
           else DENSE_BLOCK_BYTES)
  return max(1, block // (4 * H))


def _is_half(dtype) -> bool:
  return jnp.dtype(dtype).itemsize == 2 and jnp.issubdtype(dtype, jnp.floating)


def _bits(x: jax.Array) -> jax.Array:
  """A 16-bit float array as its uint16 bits; any other array as it is."""
  return jax.lax.bitcast_convert_type(x, jnp.uint16) if _is_half(x.dtype) else x


def _unbits(x: jax.Array, dtype) -> jax.Array:
  """``_bits``' inverse, for an array stored as ``dtype``."""
  return jax.lax.bitcast_convert_type(x, dtype) if _is_half(dtype) else x


def set_rows(x: jax.Array, rows, values: jax.Array) -> jax.Array:
  """``x.at[rows].set(values)`` in ``x``'s dtype; padding ids (>= len(x)) are dropped.
  ``rows`` may be an index tuple, ``(r, rows)`` for stacked [R, D, H] tables.

  A 16-bit float table is scattered as its uint16 bits: XLA:CPU has no bfloat16 scatter
  and otherwise widens the whole table to float32 and back around it, three [R, D, H]
  round trips a step for the table and its moments (bfloat16 WordNet tables trained 8x
  slower than float32; experiments/bench/NOTES.md). The bits written are the same.
  """
  values = values.astype(x.dtype)
  return _unbits(_bits(x).at[rows].set(_bits(values), mode="drop"), x.dtype)


def row_sparse_adam(learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-8, lazy: bool = True, rowwise: bool = False,
                    moments_dtype=None) -> RowSparseTransform:
  """Adam on the rows a batch touches only (``lazy``), or on every row in place.

  A lazy row moves only in the steps whose batch touches it, and its moments wait for it
  (TensorFlow's LazyAdam): late in a run, a feature seen once moves by one step of about
  ``learning_rate * (1 - b1) / sqrt(1 - b2)``, where Adam goes on moving it by its decaying
  momentum, about ten times as far in all (the sum of ``(b1 / sqrt(b2))**j``, j >= 0, for
  the defaults). With ``lazy=False`` every row's
  moments decay and every row moves each step: Adam's own update, by one in-place pass over
  the table (``dense_update``) instead of optax's dense gradient and state.

  With ``rowwise`` a row keeps one second moment, the running mean over its H entries of
  the squared gradient, instead of H of them (the row-wise second moment of embedding
  optimizers: Caffe2's RowWiseSparseAdagrad, MXNet's GroupAdaGrad, PyTorch-BigGraph's
  RowAdagrad): the state is [D, H] + [D, 1] instead of 2 x [D, H], and a pass over the
  whole table moves five [D, H] arrays instead of seven.

  Args:
    learning_rate: a float or an optax schedule of the step count.
    b1, b2, eps: Adam's hyper-parameters.
    lazy: False for Adam's update of every row (see above).
    rowwise: one second moment per row ([D, 1]) instead of per entry ([D, H]).
    moments_dtype: the moments' dtype (default: the table's); the arithmetic is float32
      whatever it is. 16-bit float moments are stored as their uint16 bits
      (``jax.lax.bitcast_convert_type`` gives their values): XLA:CPU has no bfloat16
      scatter or in-place slice update, and widens a whole bfloat16 array to float32 and
      back around each one.

  References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    Lerer et al., "PyTorch-BigGraph: A Large-scale Graph Embedding System", SysML 2019
    (row-wise AdaGrad for embedding tables).

  Returns:
    A ``RowSparseTransform``.
  """

  def stored(table: jax.Array):
    """The moments' dtype (16-bit floats are kept as their uint16 bits: see ``_bits``)."""
    return jnp.dtype(moments_dtype or table.dtype)

  def init(table: jax.Array) -> RowSparseAdamState:
    zeros = lambda shape: _bits(jnp.zeros(shape, stored(table)))
    return RowSparseAdamState(count=jnp.zeros((), jnp.int32), mu=zeros(table.shape),
                              nu=zeros((*table.shape[:-1], 1) if rowwise else table.shape))

  f32 = lambda x: x.astype(jnp.float32)

  def moments(g, mu, nu):
    """Adam's new moments, in float32 whatever the storage (a bfloat16 table, moments)."""
    g = f32(g)
    g2 = jnp.mean(jnp.square(g), axis=-1, keepdims=True) if rowwise else jnp.square(g)
    return b1 * f32(mu) + (1 - b1) * g, b2 * f32(nu) + (1 - b2) * g2

  def step(p, mu, nu, count):
    """The parameters after Adam's step from the new (float32) moments."""
    lr = learning_rate(count - 1) if callable(learning_rate) else learning_rate
    t = count.astype(jnp.float32)
    mu_hat = mu / (1 - b1 ** t)
    nu_hat = nu / (1 - b2 ** t)
    return f32(p) - lr * mu_hat / (jnp.sqrt(nu_hat) + eps)

  def update(table, rows, row_grads, state):
    count, dtype = state.count + 1, stored(table)
    # Padding rows (ids >= D) read row D - 1 and are dropped when written back: clipping
    # spares the select a zero fill costs over every gathered row.
    take = lambda x: jnp.take(x, rows, axis=0, mode="clip")
    mu, nu = moments(row_grads, _unbits(take(state.mu), dtype), _unbits(take(state.nu), dtype))
    new = step(take(table), mu, nu, count)
    put = lambda x, v: set_rows(x, rows, v)
    save = lambda x, v: put(x, _bits(v.astype(dtype)))
    return put(table, new), RowSparseAdamState(count=count, mu=save(state.mu, mu),
                                               nu=save(state.nu, nu))

  def update_at(tables, r, rows, row_grads, states, current=None):
    count = jax.lax.dynamic_index_in_dim(states.count, r, keepdims=False) + 1
    dtype, index = stored(tables), (r, rows)
    take = lambda x: x.at[index].get(mode="clip")  # Padding as in ``update``.
    mu, nu = moments(row_grads, _unbits(take(states.mu), dtype),
                     _unbits(take(states.nu), dtype))
    new = step(take(tables) if current is None else current, mu, nu, count)
    put = lambda x, v: set_rows(x, index, v)
    save = lambda x, v: put(x, _bits(v.astype(dtype)))
    counts = jax.lax.dynamic_update_index_in_dim(states.count, count, r, 0)
    return put(tables, new), RowSparseAdamState(count=counts, mu=save(states.mu, mu),
                                                nu=save(states.nu, nu))

  def dense_update(table, touched, grads, state):
    count, dtype = state.count + 1, stored(table)
    keep = ((lambda x, v: jnp.where(touched[:, None], v, f32(x))) if lazy else
            (lambda x, v: v))
    old_mu, old_nu = _unbits(state.mu, dtype), _unbits(state.nu, dtype)
    mu, nu = moments(grads, old_mu, old_nu)
    # The step reads the kept moments, the very values stored: computed from the old
    # moments instead, XLA:CPU copied both [D, H] moment tables each step to update them in
    # place (the text config on text WordNet: 492 -> 370 ms a step; experiments/bench/NOTES.md).
    mu, nu = keep(old_mu, mu), keep(old_nu, nu)
    new = keep(table, step(table, mu, nu, count))
    return new.astype(table.dtype), RowSparseAdamState(
        count=count, mu=_bits(mu.astype(dtype)), nu=_bits(nu.astype(dtype)))

  def dense_update_at(tables, r, touched, grads, states):
    _, D, H = tables.shape
    count = jax.lax.dynamic_index_in_dim(states.count, r, keepdims=False) + 1
    # A 16-bit float table is sliced and written as its uint16 bits too, as its moments are
    # stored: XLA:CPU widened the whole [R, D, H] array to float32 and back around each
    # block's bfloat16 write (bfloat16 moments: 8.4 s against 13 ms a repetition;
    # experiments/bench/NOTES.md).
    dtypes = (tables.dtype, stored(tables), stored(tables))

    def block(parts, start, size):
      """The update of rows [start, start + size) of repetition r, written in place."""
      (table_all, mu_all, nu_all), (t_dtype, m_dtype, _) = parts, dtypes
      take = lambda a, dtype: _unbits(
          jax.lax.dynamic_slice(a, (r, start, 0), (1, size, a.shape[2]))[0], dtype)
      put = lambda a, v, dtype: jax.lax.dynamic_update_slice(
          a, _bits(v[None].astype(dtype)), (r, start, 0))
      mask = jax.lax.dynamic_slice_in_dim(touched, start, size)[:, None]
      keep = (lambda v, old: jnp.where(mask, v, f32(old))) if lazy else (lambda v, old: v)
      old_mu, old_nu = take(mu_all, m_dtype), take(nu_all, m_dtype)
      mu, nu = moments(jax.lax.dynamic_slice_in_dim(grads, start, size), old_mu, old_nu)
      mu_all = put(mu_all, keep(mu, old_mu), m_dtype)
      nu_all = put(nu_all, keep(nu, old_nu), m_dtype)
      # The step reads the moments back from the tables just written: computed from the
      # old moments, it would have to run before their in-place writes, and XLA:CPU instead
      # copied both [R, D, H] moment tables (experiments/bench/NOTES.md).
      table = take(table_all, t_dtype)
      new = step(table, f32(take(mu_all, m_dtype)), f32(take(nu_all, m_dtype)), count)
      return put(table_all, keep(new, table), t_dtype), mu_all, nu_all

    # Blocks of rows small enough to stay in cache between their reads and writes.
    size = min(D, dense_block_rows(H))
    parts = jax.lax.fori_loop(0, D // size, lambda i, p: block(p, i * size, size),
                              (_bits(tables), states.mu, states.nu))
    if D % size:
      parts = block(parts, D - D % size, D % size)
    table_all, mu_all, nu_all = parts
    counts = jax.lax.dynamic_update_index_in_dim(states.count, count, r, 0)
    return _unbits(table_all, tables.dtype), RowSparseAdamState(count=counts, mu=mu_all,
                                                                nu=nu_all)

  return RowSparseTransform(init, update, dense_update, update_at, dense_update_at, lazy)


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
