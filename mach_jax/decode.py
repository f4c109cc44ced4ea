"""Merge per-repetition bucket scores into class scores, and take the top-k over all K.

Class k's score merges the R values at its buckets h_r(k). Estimators:

  * ``mean``      (1/R) sum_r P_r(h_r(k))        -- MACH's estimator (default)
  * ``unbiased``  B/(B-1) * (mean - 1/B)          -- unbiased for p_k; same top-k as mean
  * ``logit_sum`` sum_r logit_r(h_r(k))           -- the official code's merge
  * ``min``       min_r P_r(h_r(k))               -- count-min style
  * ``median``    median_r P_r(h_r(k))
  * ``log_mean``  (1/R) sum_r log P_r(h_r(k))     -- a class must score well everywhere

Scores over all K are computed in chunks of C classes inside one ``lax.scan`` with a running
top-k, so memory is O(b * R * C) whatever K is. The bucket ids of a chunk come from a
class-major table [K, R] (one row gather serves all repetitions) built once on the host.

The forward pass and this merge are jitted separately: on XLA:CPU one fused function was
about 7x slower (DESIGN.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax import losses
from mach_jax.hashing import HashSpec

ESTIMATORS = ("mean", "unbiased", "logit_sum", "min", "median", "log_mean")


def rep_values(estimator: str, loss: str, logits: jax.Array) -> jax.Array:
  """What each repetition contributes for ``estimator``: probs, logits or log-probs."""
  if estimator == "logit_sum":
    return logits
  if estimator == "log_mean":
    return losses.bucket_log_probabilities(loss, logits)
  if estimator in ESTIMATORS:
    return losses.bucket_probabilities(loss, logits)
  raise ValueError(f"estimator={estimator!r}: expected one of {ESTIMATORS}")


def merge(estimator: str, gathered: jax.Array, num_buckets: int) -> jax.Array:
  """Reduce gathered per-repetition values [R, ...] over the repetition axis."""
  if estimator in ("mean", "log_mean"):
    return gathered.mean(axis=0)
  if estimator == "unbiased":
    B = num_buckets
    return B / (B - 1) * (gathered.mean(axis=0) - 1.0 / B)
  if estimator == "logit_sum":
    return gathered.sum(axis=0)
  if estimator == "min":
    return gathered.min(axis=0)
  if estimator == "median":
    return jnp.median(gathered, axis=0)
  raise ValueError(f"estimator={estimator!r}: expected one of {ESTIMATORS}")


def class_scores(values: jax.Array, class_buckets: jax.Array, estimator: str) -> jax.Array:
  """Scores of the classes whose buckets are given.

  Args:
    values: [R, b, B] per-repetition values (see ``rep_values``).
    class_buckets: int32 [C, R], the bucket of each class in each repetition.
    estimator: one of ``ESTIMATORS``.

  Returns:
    [b, C] class scores.
  """
  return _scores_from_rows(jnp.swapaxes(values, 1, 2), class_buckets, estimator).T


def _scores_from_rows(rows: jax.Array, class_buckets: jax.Array, estimator: str) -> jax.Array:
  """Bucket-major values [R, B, b], buckets [C, R] -> class-major scores [C, b].

  Gathering whole rows of the [R, B, b] layout is about 8x faster on XLA:CPU than gathering
  columns of [R, b, B] (0.40 s against 3.3 s for b=256, R=4, K=300K, measured 2026-11-24).
  """
  # One plain gather per repetition, folded as it goes: a vmapped (batched) gather into an
  # [R, C, b] block was 4x slower on XLA:CPU. Only the median needs the whole block.
  # Past _MAX_UNROLLED_REPS repetitions the unrolled trace grows too long; vmap instead.
  R, B = rows.shape[0], rows.shape[1]
  if estimator == "median" or R > _MAX_UNROLLED_REPS:
    return merge(estimator, jax.vmap(lambda v, idx: v[idx])(rows, class_buckets.T), B)
  parts = [rows[r][class_buckets[:, r]] for r in range(R)]
  if estimator == "min":
    return functools.reduce(jnp.minimum, parts)
  total = functools.reduce(jnp.add, parts)
  if estimator == "logit_sum":
    return total
  if estimator == "unbiased":
    return B / (B - 1) * (total / R - 1.0 / B)
  return total / R  # mean, log_mean


_MAX_UNROLLED_REPS = 64


def chunk_size_for_budget(batch: int, R: int, budget_bytes: int) -> int:
  """Largest chunk C whose working set, b*(R+2)*C float32, fits in ``budget_bytes``.

  (R gathered values, the merged scores and the masked scores per class and point.) C is a
  multiple of 128 when the budget allows it.
  """
  per_class = 4 * batch * (R + 2)
  C = budget_bytes // per_class
  if C < 1:
    raise ValueError(f"memory_budget_bytes={budget_bytes} is below the {per_class} bytes one "
                     f"class needs at batch {batch}, R={R}")
  return int(C // 128 * 128) if C >= 128 else int(C)


def class_major_table(spec: HashSpec, chunk_size: int) -> np.ndarray:
  """int32 [num_chunks * chunk_size, R]; rows past K are padding (masked at decode)."""
  num_chunks = -(-spec.K // chunk_size)
  table = np.zeros((num_chunks * chunk_size, spec.R), np.int32)
  table[:spec.K] = spec.bucket_table().T
  return table


@functools.partial(jax.jit, static_argnames=("estimator", "k", "num_classes"))
def topk_chunked(values: jax.Array, table: jax.Array, *, estimator: str, k: int,
                 num_classes: int):
  """Top-k classes over all K, chunk by chunk.

  Args:
    values: [R, b, B] per-repetition values.
    table: int32 [num_chunks, C, R] class-major bucket table (see ``class_major_table``).
    estimator: merge over repetitions.
    k: how many classes to return.
    num_classes: K; padded classes (ids >= K) never enter the top-k.

  Returns:
    (scores [b, k] float32, classes [b, k] int32), best first.
  """
  num_chunks, C, _ = table.shape
  if k > num_classes:
    raise ValueError(f"k={k} > K={num_classes}")
  b = values.shape[1]
  kc = min(k, C)
  rows = jnp.swapaxes(values, 1, 2)  # Materialised once, outside the loop.

  def body(carry, chunk):
    best_s, best_i = carry
    i, buckets = chunk
    ids = i * C + jnp.arange(C, dtype=jnp.int32)
    s = _scores_from_rows(rows, buckets, estimator).T
    s = jnp.where(ids[None] < num_classes, s, -jnp.inf)
    top_s, pos = jax.lax.top_k(s, kc)
    cat_s = jnp.concatenate([best_s, top_s], axis=1)
    cat_i = jnp.concatenate([best_i, ids[pos]], axis=1)
    new_s, sel = jax.lax.top_k(cat_s, k)
    return (new_s, jnp.take_along_axis(cat_i, sel, axis=1)), None

  init = (jnp.full((b, k), -jnp.inf, values.dtype), jnp.zeros((b, k), jnp.int32))
  (scores, classes), _ = jax.lax.scan(body, init, (jnp.arange(num_chunks), table))
  return scores, classes


class Decoder:
  """Bounded-memory exact top-k over all K classes for one hash spec.

  Args:
    spec: the model's hash spec.
    loss: the training loss (decides sigmoid vs softmax probabilities).
    batch_size: the largest batch that will be decoded (sizes the chunks).
    memory_budget_bytes: bound on the gathered [b, R, C] block per chunk.
  """

  def __init__(self, spec: HashSpec, loss: str, batch_size: int,
               memory_budget_bytes: int = 16 << 20):
    self.spec = spec
    self.loss = loss
    self.chunk_size = min(chunk_size_for_budget(batch_size, spec.R, memory_budget_bytes),
                          -(-spec.K // 128) * 128)
    table = class_major_table(spec, self.chunk_size)
    self.num_chunks = table.shape[0] // self.chunk_size
    self.table = jnp.asarray(table.reshape(self.num_chunks, self.chunk_size, spec.R))

  def topk(self, logits: jax.Array, k: int, estimator: str = "mean"):
    """logits [R, b, B] -> (scores [b, k], classes [b, k])."""
    values = _rep_values_jit(estimator, self.loss, logits)
    return topk_chunked(values, self.table, estimator=estimator, k=k,
                        num_classes=self.spec.K)


_rep_values_jit = jax.jit(rep_values, static_argnums=(0, 1))
