"""How a batch's sparse nonzeros meet an input table: the embedding bag, or a densified product.

``embedding_bag`` sums gathered rows (``values[t] * table[indices[t]]``) into each batch
row; ``densify`` writes the nonzeros into a dense [b, D] batch for one GEMM instead;
``use_dense_bag`` picks between them by measured rules per platform. Shapes: a batch's
flattened nonzeros ``indices``, ``values``, ``segments`` are [T] (``mach_jax.data.batching``),
tables [D, H], results [b, H].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def embedding_bag(table: jax.Array, indices: jax.Array, values: jax.Array,
                  segments: jax.Array, num_rows: int, chunk: int | None = None) -> jax.Array:
  """Row i of the result is sum over nonzeros t of row i of values[t] * table[indices[t]].

  The nonzeros are taken ``chunk`` at a time (a ``fori_loop``): each chunk's rows are
  gathered, scaled and added into the [b, H] result, so only a [chunk, H] temporary is
  live (in cache) instead of a [T, H] buffer written to memory and read back; a long row
  costs only its own nonzeros. Equal to one segment-sum over all T to float rounding.

  Args:
    table: [D, H].
    indices, values, segments: [T] flattened nonzeros of the batch (see data.batching).
    num_rows: b.
    chunk: nonzeros per step of the loop; 0 for one gather of all T rows and one
      segment-sum. Default: ``bag_chunk()``.
  """
  def add(out, idx, val, seg):
    rows = jnp.take(table, idx, axis=0) * val.astype(table.dtype)[:, None]
    return out.at[seg].add(rows, indices_are_sorted=True, mode="drop")

  zeros = jnp.zeros((num_rows, table.shape[1]), table.dtype)
  return _in_chunks(add, zeros, indices, values, segments, chunk)


def embedding_bag_grad(out_grad: jax.Array, indices: jax.Array, values: jax.Array,
                       segments: jax.Array, num_features: int,
                       chunk: int | None = None) -> jax.Array:
  """The table's gradient [D, H] from the bag's output gradient ``out_grad`` [b, H].

  The bag is linear in the table: row d of the gradient is the sum over nonzeros t with
  indices[t] = d of values[t] * out_grad[segments[t]]. What autodiff of ``embedding_bag``
  gives, to float rounding, without needing the table itself (``steps`` reads it inside a
  stack of tables and must not slice it out). The same chunks as the bag.
  """
  def add(grad, idx, val, seg):
    rows = jnp.take(out_grad, seg, axis=0) * val.astype(out_grad.dtype)[:, None]
    return grad.at[idx].add(rows, mode="drop")

  zeros = jnp.zeros((num_features, out_grad.shape[1]), out_grad.dtype)
  return _in_chunks(add, zeros, indices, values, segments, chunk)


def _in_chunks(add, out, indices, values, segments, chunk: int | None):
  """``add(out, indices, values, segments)`` over the [T] nonzeros, ``chunk`` at a time."""
  chunk = bag_chunk() if chunk is None else chunk
  T = indices.shape[0]
  if chunk <= 0 or T <= chunk:
    return add(out, indices, values, segments)
  # The first piece (the remainder, or one chunk) outside the loop: the loop's carry then
  # has the type the table gives it (varying over a shard_map's axes, as the table is).
  first = T % chunk or chunk
  out = add(out, indices[:first], values[:first], segments[:first])

  def body(c, out):
    piece = lambda a: jax.lax.dynamic_slice_in_dim(a, first + c * chunk, chunk)
    return add(out, piece(indices), piece(values), piece(segments))

  return jax.lax.fori_loop(0, (T - first) // chunk, body, out)


# On XLA:CPU one gather of all T rows and a segment-sum took 34-40 ms for b = 512 rows of
# 192 nonzeros from a [32768, 256] table; chunks of 512-4,096 nonzeros, 10-13 ms (`python
# -m experiments.bench.bag`, 2-core Intel Xeon, 2026-12-06; experiments/bench/NOTES.md,
# "The embedding bag in chunks"). A GPU keeps the one-shot gather.
BAG_CHUNK_CPU = 1024


def bag_chunk(platform: str | None = None) -> int:
  """``embedding_bag``'s default chunk on ``platform`` (default ``jax.default_backend()``)."""
  return BAG_CHUNK_CPU if (platform or jax.default_backend()) == "cpu" else 0


def densify(indices: jax.Array, values: jax.Array, segments: jax.Array, num_rows: int,
            num_features: int, dtype=jnp.float32) -> jax.Array:
  """The batch's flattened nonzeros as a dense [b, D] matrix (padding adds zeros)."""
  return jnp.zeros((num_rows, num_features), dtype).at[segments, indices].add(
      values.astype(dtype))


# 'auto' on XLA:CPU densifies when b*D <= 48*T: forward and backward of 16 repetitions of
# H = 512, b = 128 rows of 96 nonzeros (T = 12,288), the chunked gather against the dense
# product took 85-90 against 55-57 ms at D = 1,836 (bibtex, b*D = 19 T), 107 against 89 at
# 32 T, 122-125 against 128-134 at 48 T, 143 against 185 at 64 T (`python -m
# experiments.bench.bag --D 1836 --H 512 --b 128 --nnz 96 --R 16 --backward`, 2-core
# Intel Xeon, 2026-12-06; one gather of all T rows, before the chunks, had the rule at
# 64 T). Only for b >= 16 rows: below that the product is bound by reading the whole
# [D, H] table (one bibtex query, R = 16, H = 512: dense 27.5 ms, gather 1.2 ms; 2 cores,
# 2026-12-03).
EMBEDDING_BAG_DENSE_RATIO = 48
EMBEDDING_BAG_DENSE_MIN_ROWS = 16
# On a GPU the segment-sum is a scatter-add of T x H atomic updates: 4 repetitions
# of b = 2,048, T = 73,728, H = 2,048 spent 97 of a 117 ms step in it on an H200, against
# 17 ms for the two densified [b, D'] x [D', H] products (8 repetitions: 942 ms against 34).
# 'auto' there densifies while the dense [b, D] batch holds at most 2^30 entries.
EMBEDDING_BAG_DENSE_GPU_MAX = 2**30


MODES = ("auto", "dense", "gather")  # config.model.embedding_bag


def use_dense_bag(mode: str, num_rows: int, num_features: int, num_nonzeros: int,
                  platform: str | None = None) -> bool:
  """Whether ``mode`` meets a batch with a dense [b, D] product rather than a row gather.

  Args:
    mode: config.model.embedding_bag: 'dense', 'gather', or 'auto' (the measured rules above;
      ``platform``, default ``jax.default_backend()``, picks the GPU or the CPU rule).
    num_rows, num_features, num_nonzeros: b, D, T.
  """
  if mode == "dense":
    return True
  if mode == "gather":
    return False
  if mode == "auto":
    if num_rows < EMBEDDING_BAG_DENSE_MIN_ROWS:
      return False
    if (platform or jax.default_backend()) == "gpu":
      return num_rows * num_features <= EMBEDDING_BAG_DENSE_GPU_MAX
    return num_rows * num_features <= EMBEDDING_BAG_DENSE_RATIO * num_nonzeros
  raise ValueError(f"embedding_bag={mode!r}: expected one of {MODES}")


def gathered_rows_bag(mode: str, platform: str | None = None) -> str:
  """The bag of row-sparse Adam's table of gathered (or masked) rows.

  On CPU, 'auto' becomes 'gather': this table holds at most the batch's own rows, and the
  CPU rule above was measured on whole tables. Elsewhere 'auto' stays 'auto' (a GPU
  densifies); 'dense' and 'gather' are kept as asked.
  """
  if mode == "auto" and (platform or jax.default_backend()) == "cpu":
    return "gather"
  return mode
