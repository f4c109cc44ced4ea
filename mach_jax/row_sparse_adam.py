"""Row-sparse Adam for an input table: the rows a batch touches, updated in place.

A batch touches only the rows of the features it contains, yet a dense Adam step reads and
writes every row of the [D, H] table and of both moment tables. ``row_sparse_adam`` gathers
the touched rows, applies Adam to them and scatters them back; rows the batch did not touch
keep their parameters *and* their moments (their moments do not decay), as in TensorFlow's
LazyAdam. The bias correction uses the global step count. On the first step it equals dense
Adam exactly (an untouched row has zero gradient and zero moments, so dense Adam does not
move it either); afterwards the two differ on rows that go untouched. When a batch touches
most rows, one pass over the whole table in cache-sized blocks does the same update
(``dense_update``, ``dense_update_at``). ``mach_jax.optim.make_table_optimizer`` builds it
from a config.

References:
  Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["DENSE_BLOCK_BYTES", "DENSE_BLOCK_BYTES_CPU", "RowSparseAdamState",
           "RowSparseTransform", "dense_block_rows", "row_sparse_adam", "set_rows",
           "touched_rows"]


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
    # The step reads the kept moments, the values stored (before a 16-bit moment's
    # rounding): computed from the old moments instead, XLA:CPU copied both [D, H] moment
    # tables each step to update them in place (the text config on text WordNet: 492 -> 370
    # ms a step; experiments/bench/NOTES.md).
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


def touched_rows(ids: jax.Array, num_rows: int, size: int) -> tuple[jax.Array, jax.Array]:
  """The distinct rows a batch touches, and where each entry finds its row among them.

  What ``jnp.unique(ids, size=size, fill_value=num_rows, return_inverse=True)`` gives, by a
  presence mask and its running count instead of a sort: O(T + D) rather than
  O(T log T). The sorts were a tenth of a text step (8 repetitions of T = 65,536 ids;
  experiments/bench/NOTES.md).

  Args:
    ids: int [T], row ids in [0, num_rows]; num_rows marks padding.
    num_rows: D, the table's rows.
    size: slots of the result, more than the distinct real ids (min(T, D) + 1 will do).

  Returns:
    (touched [size]: the distinct ids ascending, then num_rows; local [T] int32: the slot of
    each entry's id, padding entries pointing to the last slot, which is always padding).
  """
  present = jnp.zeros(num_rows + 1, jnp.int32).at[ids].set(1).at[num_rows].set(0)
  slot = jnp.cumsum(present) - 1
  touched = jnp.nonzero(present, size=size, fill_value=num_rows)[0]
  local = jnp.where(ids < num_rows, slot[jnp.minimum(ids, num_rows)], size - 1)
  return touched.astype(ids.dtype), local.astype(jnp.int32)
