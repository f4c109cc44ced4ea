"""Row-sparse ("lazy") Adam for the input table of one repetition.

A batch touches only the table rows of the features it contains, yet a dense Adam step
reads and writes every row of the [D, H] table and of both moment tables. This update
gathers the touched rows, applies Adam to them and scatters them back; rows the batch did
not touch keep their parameters *and* their moments (their moments do not decay), as in
TensorFlow's LazyAdam. The bias correction uses the global step count. On the first step
it equals dense Adam exactly (an untouched row has zero gradient and zero moments, so
dense Adam does not move it either); afterwards the two differ on rows that go untouched.

State is a NamedTuple of per-repetition arrays, so it vmaps, shards on 'rep' and
checkpoints like any optax state.

References:
  Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class RowSparseAdamState(NamedTuple):
  count: jax.Array  # int32 []
  mu: jax.Array  # [D, H]
  nu: jax.Array  # [D, H]


def init(table: jax.Array) -> RowSparseAdamState:
  return RowSparseAdamState(count=jnp.zeros((), jnp.int32), mu=jnp.zeros_like(table),
                            nu=jnp.zeros_like(table))


def update(table: jax.Array, rows: jax.Array, row_grads: jax.Array, state: RowSparseAdamState,
           learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8) -> tuple[jax.Array, RowSparseAdamState]:
  """Adam on the rows ``rows`` of ``table`` only.

  Args:
    table: [D, H] parameters.
    rows: int32 [U] distinct row ids; entries >= D are padding and change nothing.
    row_grads: [U, H] gradient of each listed row (zero for padding).
    state: moments of the whole table and the step count.
    learning_rate: a float or an optax schedule of the step count.

  Returns:
    (new table, new state).
  """
  count = state.count + 1
  lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
  take = lambda x: jnp.take(x, rows, axis=0, mode="fill", fill_value=0)
  mu = b1 * take(state.mu) + (1 - b1) * row_grads
  nu = b2 * take(state.nu) + (1 - b2) * jnp.square(row_grads)
  t = count.astype(table.dtype)
  mu_hat = mu / (1 - b1 ** t)
  nu_hat = nu / (1 - b2 ** t)
  step = -lr * mu_hat / (jnp.sqrt(nu_hat) + eps)
  put = lambda x, v: x.at[rows].set(v, mode="drop")  # Padding ids (>= D) are dropped.
  new_table = put(table, take(table) + step)
  return new_table, RowSparseAdamState(count=count, mu=put(state.mu, mu), nu=put(state.nu, nu))


def make(learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> tuple[Callable, Callable]:
  """(init, update) with the hyper-parameters bound, optax-style."""
  return init, lambda table, rows, grads, state: update(table, rows, grads, state,
                                                        learning_rate, b1, b2, eps)
