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


def mach_loss_sums(name: str, logits: jax.Array, buckets: jax.Array, label_mask: jax.Array,
                   row_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum over counted rows of each repetition's loss [R], number of counted rows []).

  The mean is their ratio; a data-parallel step adds both up across devices first.
  """
  B = logits.shape[-1]
  label_mask = label_mask.astype(jnp.float32)
  row_mask = row_mask.astype(jnp.float32)
  if name == "softmax":
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits, buckets[..., 0])
    weight = row_mask * label_mask[:, 0]
  elif name == "bce":
    targets = bucket_targets(buckets, label_mask, B, "max")
    per_row = optax.sigmoid_binary_cross_entropy(logits, targets).sum(axis=-1)
    weight = row_mask
  elif name == "softmax_hist":
    # -sum_B hist/n * log_softmax = logsumexp - (1/n) sum_l logits[bucket_l]: the same
    # cross-entropy read from the L label buckets, with no [R, b, B] histogram or target.
    n = label_mask.sum(axis=-1)  # [b]
    picked = jnp.take_along_axis(logits, buckets, axis=-1)  # [R, b, L]
    per_row = (jax.nn.logsumexp(logits, axis=-1)
               - (picked * label_mask[None]).sum(axis=-1) / jnp.maximum(n, 1.0)[None])
    weight = row_mask * (n > 0)
  else:
    raise ValueError(f"loss={name!r}: expected one of {LOSSES}")
  return (per_row * weight[None]).sum(axis=1), weight.sum()


def bucket_probabilities(name: str, logits: jax.Array) -> jax.Array:
  """P_r(bucket | x) as the loss defines it: sigmoid for 'bce', softmax otherwise."""
  if name == "bce":
    return jax.nn.sigmoid(logits)
  return jax.nn.softmax(logits, axis=-1)


def bucket_log_probabilities(name: str, logits: jax.Array) -> jax.Array:
  if name == "bce":
    return jax.nn.log_sigmoid(logits)
  return jax.nn.log_softmax(logits, axis=-1)
