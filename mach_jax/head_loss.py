"""The layers above the input table and their loss, a slice of the batch at a time.

A batch's logits [R', b, B] are a step's largest temporaries when b x B is large: on the
1M catalogue's ``products.py:quarter`` (b = 1,024, B = 4,096) two [1024, 4096] float32
buffers, the logits, their exponentials and their gradient, are 32 MB of the step's 54 MB
(experiments/bench/NOTES.md). Over slices of the batch's rows only one slice's logits are
live: each slice's loss is differentiated as it is computed (its gradient needs only the
cotangent of a per-repetition sum, applied in the backward pass), so nothing is
recomputed, and the gradient of the layers above the table is summed over the slices.
The loss and its gradient are those of the whole batch up to the order of a sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mach_jax import losses, model as model_lib

__all__ = ["SLICE_BYTES", "slice_rows", "head_loss_sums"]

SLICE_BYTES = 4 << 20  # A slice's float32 logits [R', rows, B] are at most this large.


def slice_rows(R: int, b: int, B: int, budget: int | None = None) -> int:
  """The rows of a slice: b when the batch's logits fit ``budget`` bytes, else the largest
  divisor of b whose slice fits -- or b again when that divisor is under half the slice
  the budget allows (a batch of prime size would otherwise run one row at a time).

  Args:
    R: the repetitions computed together (1 when the step runs them one at a time).
    b: the batch's rows; B: the buckets.
    budget: bytes of a slice's logits (default ``SLICE_BYTES``).
  """
  limit = max(1, (SLICE_BYTES if budget is None else budget) // (4 * R * B))
  if b <= limit:
    return b
  rows = max(d for d in range(1, limit + 1) if b % d == 0)
  return rows if 2 * rows >= limit else b


def head_loss_sums(model: model_lib.MACH, heads: dict, h: jax.Array, buckets: jax.Array,
                   label_mask: jax.Array, row_mask: jax.Array, loss: str,
                   rows: int | None = None) -> tuple[jax.Array, jax.Array]:
  """``losses.mach_loss_sums`` of the logits of the layers above the input table.

  Args:
    model: the MACH module (its widths and dtype).
    heads: ``params['reps']`` without the table and its bias, each [R', ...].
    h: the input layer's pre-activation [R', b, H] (the bag plus its bias).
    buckets: [R', b, L]; label_mask: [b, L]; row_mask: [b]; loss: as ``losses`` names it.
    rows: rows per slice (default ``slice_rows``); it must divide b.

  Returns:
    (the sum over counted rows of each repetition's loss [R'], the counted rows []).

  Sliced, it is tested on meshes without a 'data' axis only (its callers, row-sparse Adam's
  steps, run without one).
  """
  R, b, _ = h.shape
  rows = slice_rows(R, b, model.num_buckets) if rows is None else rows
  if b % rows:
    raise ValueError(f"rows={rows} per slice does not divide the batch's {b} rows")

  def sums(heads, h, buckets, label_mask, row_mask):
    logits = model_lib.heads_logits(model, heads, h)
    return losses.mach_loss_sums(loss, logits, buckets, label_mask, row_mask)

  if rows == b:
    return sums(heads, h, buckets, label_mask, row_mask)
  return _in_slices(sums, rows)(heads, h, buckets, label_mask, row_mask)


def _in_slices(sums, rows: int):
  """``sums`` over slices of ``rows`` batch rows, its gradient taken slice by slice."""

  def forward(heads, h, buckets, label_mask, row_mask):
    R, b, H = h.shape
    n = b // rows
    split = lambda a, axis: jnp.moveaxis(
        a.reshape(a.shape[:axis] + (n, rows) + a.shape[axis + 1:]), axis, 0)

    def one(piece):
      h_s, *rest = piece
      (s, c), pull = jax.vjp(lambda p, x: sums(p, x, *rest), heads, h_s)
      # Repetition r's sum depends only on its own parameters and rows: a cotangent of
      # ones gives every repetition's gradient at once, scaled by its own in ``backward``.
      d_p, d_h = pull((jnp.ones_like(s), jnp.zeros_like(c)))
      return (s, c, d_p), d_h

    def body(carry, piece):
      out, d_h = one(piece)
      return jax.tree.map(jnp.add, carry, out), d_h

    pieces = (split(h, 1), split(buckets, 1), split(label_mask, 0), split(row_mask, 0))
    # The first slice outside the loop: its results start the sums with the types (under
    # shard_map, the mesh axes they vary over) that the loop's carry must keep.
    first, d_h0 = one(jax.tree.map(lambda a: a[0], pieces))
    (total, count, d_heads), d_h = jax.lax.scan(body, first,
                                                jax.tree.map(lambda a: a[1:], pieces))
    d_h = jnp.concatenate([d_h0[None], d_h])
    d_h = jnp.moveaxis(d_h, 0, 1).reshape(h.shape)  # [n, R', rows, H] -> [R', b, H]
    return (total, count), (d_heads, d_h)

  def backward(res, cotangent):
    d_heads, d_h = res
    per_rep = cotangent[0]  # [R']; the count depends on no parameter.
    scale = lambda a: a * per_rep.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)
    return jax.tree.map(scale, d_heads), scale(d_h), None, None, None

  f = jax.custom_vjp(lambda *args: forward(*args)[0])
  f.defvjp(forward, backward)
  return f
