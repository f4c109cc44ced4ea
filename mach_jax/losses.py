"""MACH losses on hashed labels, one value per repetition.

Every loss takes logits [R, b, B], bucket ids [R, b, L] of the (padded) labels, a label
mask [b, L] and a row mask [b] (0 for batch padding), and returns a float32 [R] vector:
the mean loss of each repetition over the real rows. Returning one value per repetition
(rather than their sum) keeps repetitions independent under sharding: a sum over R would
need a cross-device reduction.

Losses:
  * ``softmax``: multi-class softmax cross-entropy on the bucket of the first label.
  * ``bce``: sigmoid binary cross-entropy on the multi-hot bucket vector (the official
    MACH choice for multi-label data), summed over buckets.
  * ``softmax_hist``: softmax cross-entropy against the label-bucket histogram normalised
    to sum to one. Rows without labels carry no signal and are skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LOSSES = ("softmax", "bce", "softmax_hist")


def bucket_targets(buckets: jax.Array, label_mask: jax.Array, num_buckets: int,
                   mode: str) -> jax.Array:
  """Scatter label buckets into [R, b, B]: 'max' gives multi-hot, 'add' a histogram."""
  R, b, L = buckets.shape
  rows = jnp.broadcast_to(jnp.arange(b)[None, :, None], buckets.shape)
  reps = jnp.broadcast_to(jnp.arange(R)[:, None, None], buckets.shape)
  weight = jnp.broadcast_to(label_mask.astype(jnp.float32)[None], buckets.shape)
  out = jnp.zeros((R, b, num_buckets), jnp.float32)
  if mode == "max":
    return out.at[reps, rows, buckets].max(weight)
  return out.at[reps, rows, buckets].add(weight)


def _masked_mean(per_row: jax.Array, row_weight: jax.Array) -> jax.Array:
  """[R, b] x [b] -> [R]."""
  return (per_row * row_weight[None]).sum(axis=1) / jnp.maximum(row_weight.sum(), 1.0)


def mach_loss(name: str, logits: jax.Array, buckets: jax.Array, label_mask: jax.Array,
              row_mask: jax.Array) -> jax.Array:
  """Per-repetition loss [R] of the named kind (see module docstring)."""
  B = logits.shape[-1]
  label_mask = label_mask.astype(jnp.float32)
  row_mask = row_mask.astype(jnp.float32)
  if name == "softmax":
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits, buckets[..., 0])
    return _masked_mean(per_row, row_mask * label_mask[:, 0])
  if name == "bce":
    targets = bucket_targets(buckets, label_mask, B, "max")
    per_row = optax.sigmoid_binary_cross_entropy(logits, targets).sum(axis=-1)
    return _masked_mean(per_row, row_mask)
  if name == "softmax_hist":
    hist = bucket_targets(buckets, label_mask, B, "add")
    total = hist.sum(axis=-1, keepdims=True)
    targets = hist / jnp.maximum(total, 1.0)
    per_row = optax.softmax_cross_entropy(logits, targets)
    return _masked_mean(per_row, row_mask * (label_mask.sum(axis=-1) > 0))
  raise ValueError(f"loss={name!r}: expected one of {LOSSES}")


def bucket_probabilities(name: str, logits: jax.Array) -> jax.Array:
  """P_r(bucket | x) as the loss defines it: sigmoid for 'bce', softmax otherwise."""
  if name == "bce":
    return jax.nn.sigmoid(logits)
  return jax.nn.softmax(logits, axis=-1)


def bucket_log_probabilities(name: str, logits: jax.Array) -> jax.Array:
  if name == "bce":
    return jax.nn.log_sigmoid(logits)
  return jax.nn.log_softmax(logits, axis=-1)
