"""Dropout for MACH's sparse input: each repetition draws its own seeded masks.

``drop_inputs`` drops nonzeros of a batch, ``drop_hidden`` the input layer's H activations
(``model.Repetition`` multiplies its mask in). The masks depend on the step, the 'data'
shard and each repetition's input-hash seed, not on the mesh or on how the repetitions are
looped, so the repetitions stay independent. ``steps.train_step`` applies them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# The key streams of dropout: key(stream) folded with the step, the 'data' shard and each
# repetition's input-hash seed (``HashSpec.input_params``).
INPUT_DROPOUT_STREAM, HIDDEN_DROPOUT_STREAM = 0x64726F70, 0x68696464


def _keep_masks(stream: int, rate: float, step: jax.Array, seeds: jax.Array, shape,
                data_axis: str | None) -> jax.Array:
  """bool [R', *shape]: each repetition's own draw of what dropout keeps."""
  key = jax.random.fold_in(jax.random.key(stream), step)
  if data_axis is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(data_axis))
  return jax.vmap(lambda s: jax.random.bernoulli(jax.random.fold_in(key, s), 1.0 - rate,
                                                 shape))(seeds)


def _per_repetition(x: dict[str, Any], R: int) -> dict[str, Any]:
  """``x`` with ``indices`` and ``values`` [R', T] (broadcast when the repetitions read the
  same features)."""
  T = x["values"].shape[-1]
  return {**x, "indices": jnp.broadcast_to(x["indices"], (R, T)),
          "values": jnp.broadcast_to(x["values"], (R, T))}


def drop_inputs(x: dict[str, Any], rate: float, step: jax.Array, seeds: jax.Array,
                data_axis: str | None = None) -> dict[str, Any]:
  """Input dropout: each repetition keeps each nonzero of the batch with probability
  1 - ``rate``, scaled by 1 / (1 - rate), and zeroes the rest (a zero value touches no row).

  Args:
    x: the sparse model input; ``indices`` and ``values`` [T] (the repetitions read the
      same features) or [R', T] (each repetition's hashed view).
    rate: the probability of dropping a nonzero, in [0, 1).
    step: the update's number (int32 []): a new mask every step.
    seeds: uint32 [R']: the repetitions' own seeds, so that each draws its own mask.
    data_axis: under ``shard_map``, the axis over which batch rows are split (each block
      draws its own mask).

  Returns:
    ``x`` with ``indices`` and ``values`` [R', T].

  References:
    Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
    JMLR 2014; Wager et al., "Dropout Training as Adaptive Regularization", NeurIPS 2013.
  """
  x = _per_repetition(x, seeds.shape[0])
  keep = _keep_masks(INPUT_DROPOUT_STREAM, rate, step, seeds, x["values"].shape[-1:],
                     data_axis)
  values = x["values"]
  return {**x, "values": jnp.where(keep, values / (1.0 - rate), jnp.zeros_like(values))}


def drop_hidden(x: dict[str, Any], rate: float, step: jax.Array, seeds: jax.Array, H: int,
                data_axis: str | None = None) -> dict[str, Any]:
  """Dropout on the input layer's H activations: ``x`` with ``hidden_keep`` [R', b, H]
  (0, or 1 / (1 - rate) with probability 1 - ``rate``), each repetition's own draw, which
  ``model.Repetition`` multiplies in. Arguments as ``drop_inputs``'s."""
  x = _per_repetition(x, seeds.shape[0])
  keep = _keep_masks(HIDDEN_DROPOUT_STREAM, rate, step, seeds, (x["mask"].shape[0], H),
                     data_axis)
  return {**x, "hidden_keep": keep.astype(jnp.float32) / (1.0 - rate)}
