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
about 7x slower (docs/design.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mach_jax import losses
from mach_jax.hashing import HashSpec, build_padded_index

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


def _scores_from_rows(rows: jax.Array, class_buckets: jax.Array, estimator: str) -> jax.Array:
  """Bucket-major values [R, B, b], buckets [C, R] -> class-major scores [C, b].

  Gathering whole rows of the [R, B, b] layout is about 8x faster on XLA:CPU than gathering
  columns of [R, b, B] (experiments/bench/NOTES.md).
  """
  # One plain gather per repetition, folded as it goes: a vmapped (batched) gather into an
  # [R, C, b] block was 4x slower on XLA:CPU. Only the median needs the whole block. The
  # fold is a loop, not unrolled, so that XLA:CPU materialises what crosses its boundary:
  # unrolled, it fused the R gathers into the caller's transpose of the [C, b] block and
  # read them column by column (b = 256, R = 8, K = 19,010: 4.4x slower), and fused an
  # elementwise ``rep_values`` (sigmoid, log-sigmoid) into the gathers, recomputing it for
  # every class (a single query of that shape, bce + log_mean: 2.3 ms against 0.3 ms).
  R, B, b = rows.shape
  if estimator == "median":
    return merge(estimator, jax.vmap(lambda v, idx: v[idx])(rows, class_buckets.T), B)
  fold = jnp.minimum if estimator == "min" else jnp.add
  init = jnp.full((class_buckets.shape[0], b), jnp.inf if estimator == "min" else 0.0,
                  rows.dtype)
  total = jax.lax.fori_loop(0, R, lambda r, acc: fold(acc, rows[r][class_buckets[:, r]]),
                            init)
  if estimator in ("min", "logit_sum"):
    return total
  if estimator == "unbiased":
    return B / (B - 1) * (total / R - 1.0 / B)
  return total / R  # mean, log_mean


PASSES_UP_TO_K = 16  # top_k_of_columns: passes up to this k, XLA's TopK beyond,
PASSES_FROM_COLUMNS = 64  # and from this many columns (fewer queries: TopK).
TOPK_GROUP = 8  # top_k_of_columns: rows pooled into one group's maximum.


def top_k_of_columns(s: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k largest entries of each column of s [C, b]: (values [b, k], rows [b, k]), in
  ``jax.lax.top_k(s.T, k)``'s order (descending, equal values by their lower row).

  Up to ``PASSES_UP_TO_K`` and from ``PASSES_FROM_COLUMNS`` columns, without a sort: the
  maximum of each group of ``TOPK_GROUP`` rows, the k best groups of each column, then the
  k best of those groups' entries, each step k passes of column-wise reductions
  (``_top_k_passes``) that XLA:CPU vectorizes over the b columns. Exact: a column's k best
  entries lie in its k best groups (ranked by maximum, then lower group), since k groups
  ranked above an entry's own each hold an entry ranked above it.

  XLA:CPU's TopK sorts each row of s.T apart, about 150 ns a row plus 2.5 ns an entry; on
  WordNet's exact decoding (C = 768, b = 512) the passes take half its time, with the
  same output (experiments/bench/NOTES.md). Few queries mean long chunks (a single
  query's one column of every class), TopK's best case and the passes' worst: below 64
  queries at k = 10 the passes were slower. NaN ranks last here (TopK puts it first; model folders
  hold no NaN weights), and -0.0 ties +0.0 (TopK ranks +0.0 first).
  """
  C, b = s.shape
  if k > PASSES_UP_TO_K or b < PASSES_FROM_COLUMNS:
    return jax.lax.top_k(s.T, k)
  s = jnp.where(jnp.isnan(s), -jnp.inf, s)
  g = TOPK_GROUP
  if C % g or C // g < 2 * k:  # Too few groups to pool: passes over every row.
    return _top_k_passes(s, jnp.arange(C, dtype=jnp.int32)[:, None], k)
  groups = s.reshape(C // g, g, b)
  _, best = _top_k_passes(groups.max(axis=1), jnp.arange(C // g, dtype=jnp.int32)[:, None], k)
  picked = best.T[:, None, :]  # [k, 1, b] group ids
  entries = groups[picked, jnp.arange(g)[None, :, None], jnp.arange(b)[None, None, :]]
  rows = picked * g + jnp.arange(g, dtype=jnp.int32)[None, :, None]  # [k, g, b]
  return _top_k_passes(entries.reshape(k * g, b), rows.reshape(k * g, b), k)


def _top_k_passes(s: jax.Array, rows: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """k passes over s [n, b] (rows [n, b] or [n, 1]: each entry's row id, distinct within a
  column): each pass the column-wise largest entry after the previous pick in the order
  (value descending, row ascending), read-only. Returns (values [b, k], rows [b, k])."""
  b = s.shape[1]
  last_v = jnp.full((1, b), jnp.inf, s.dtype)
  last_r = jnp.full((1, b), -1, jnp.int32)
  none = jnp.iinfo(jnp.int32).max
  values, picked = [], []
  for _ in range(k):
    after = (s < last_v) | ((s == last_v) & (rows > last_r))
    last_v = jnp.max(jnp.where(after, s, -jnp.inf), axis=0, keepdims=True)
    last_r = jnp.min(jnp.where(after & (s == last_v), rows, none), axis=0, keepdims=True)
    values.append(last_v[0])
    picked.append(last_r[0])
  return jnp.stack(values, axis=1), jnp.stack(picked, axis=1)


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


@functools.partial(jax.jit, static_argnames=("estimator", "k", "spec", "chunk_size"))
def topk_chunked(values: jax.Array, table: jax.Array | None, *, estimator: str, k: int,
                 spec: HashSpec, chunk_size: int):
  """Exact top-k classes over all K, chunk by chunk.

  Args:
    values: [R, b, B] per-repetition values.
    table: int32 [num_chunks, C, R] class-major bucket table (see ``class_major_table``), or
      None to hash each chunk's classes on device (no O(R*K) memory at all, for any K).
    estimator: merge over repetitions.
    k: how many classes to return.
    spec: the hash spec; padded classes (ids >= K) never enter the top-k.
    chunk_size: C.

  Returns:
    (scores [b, k] float32, classes [b, k] int32), best first.
  """
  C = chunk_size
  num_chunks = -(-spec.K // C)
  if k > spec.K:
    raise ValueError(f"k={k} > K={spec.K}")
  b = values.shape[1]
  kc = min(k, C)
  rows = jnp.swapaxes(values, 1, 2)  # Materialised once, outside the loop.

  def body(carry, i):
    best_s, best_i = carry
    ids = i * C + jnp.arange(C, dtype=jnp.int32)
    if table is None:
      buckets = spec.buckets(jnp.minimum(ids, spec.K - 1), jnp).T  # [C, R]
    else:
      buckets = table[i]
    s = _scores_from_rows(rows, buckets, estimator)  # [C, b]
    s = jnp.where(ids[:, None] < spec.K, s, -jnp.inf)
    top_s, pos = top_k_of_columns(s, kc)
    cat_s = jnp.concatenate([best_s, top_s], axis=1)
    cat_i = jnp.concatenate([best_i, ids[pos]], axis=1)
    new_s, sel = jax.lax.top_k(cat_s, k)
    return (new_s, jnp.take_along_axis(cat_i, sel, axis=1)), None

  init = (jnp.full((b, k), -jnp.inf, values.dtype), jnp.zeros((b, k), jnp.int32))
  (scores, classes), _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
  return scores, classes


DECODE_METHODS = ("exact", "candidates")


class Decoder:
  """Top-k classes for one hash spec: exact over all K, or from candidate buckets.

  Args:
    spec: the model's hash spec.
    loss: the training loss (decides sigmoid vs softmax probabilities).
    batch_size: the largest batch that will be decoded (sizes the exact path's chunks).
    memory_budget_bytes: bound on the exact path's [b, R, C] working block per chunk.
    method: 'exact' (every class scored, in chunks) or 'candidates' (the classes of each
      repetition's top-m buckets, scored exactly).
    m: buckets probed per repetition (candidates).
    min_count: keep candidates found in at least this many repetitions (candidates).
    table_budget_bytes: the exact path keeps a class-major [K, R] int32 table when it fits
      in this many bytes, and hashes each chunk on device otherwise.
    index: a prebuilt ``PaddedIndex.classes`` to share between decoders (candidates).
  """

  def __init__(self, spec: HashSpec, loss: str, batch_size: int,
               memory_budget_bytes: int = 16 << 20, method: str = "exact", m: int = 2,
               min_count: int = 1, table_budget_bytes: int = 1 << 30, index=None):
    if method not in DECODE_METHODS:
      raise ValueError(f"decode method={method!r}: expected one of {DECODE_METHODS}")
    if not 1 <= m <= spec.B:
      raise ValueError(f"m={m}: expected 1 <= m <= B={spec.B}")
    if not 1 <= min_count <= spec.R:
      raise ValueError(f"min_count={min_count}: expected 1 <= min_count <= R={spec.R}")
    self.spec, self.loss, self.method = spec, loss, method
    self.m, self.min_count = m, min_count
    self.chunk_size = min(chunk_size_for_budget(batch_size, spec.R, memory_budget_bytes),
                          -(-spec.K // 128) * 128)
    self.num_chunks = -(-spec.K // self.chunk_size)
    self.table = self.index = None
    if method == "exact" and self.num_chunks * self.chunk_size * spec.R * 4 <= table_budget_bytes:
      table = class_major_table(spec, self.chunk_size)
      self.table = jnp.asarray(table.reshape(self.num_chunks, self.chunk_size, spec.R))
    if method == "candidates":
      self.index = jnp.asarray(build_padded_index(spec).classes if index is None else index)

  @property
  def max_k(self) -> int:
    """The largest k that ``topk`` takes: K, or for candidates the R·m·S slots of the
    repetitions' top-m buckets (S: the fullest bucket's classes)."""
    if self.index is None:
      return self.spec.K
    return min(self.spec.K, self.spec.R * self.m * int(self.index.shape[2]))

  @property
  def nbytes(self) -> int:
    """Device memory held for decoding (class-major table or inverted index)."""
    arr = self.table if self.table is not None else self.index
    return 0 if arr is None else int(arr.size * arr.dtype.itemsize)

  def topk(self, logits: jax.Array, k: int, estimator: str = "mean"):
    """logits [R, b, B] -> (scores [b, k], classes [b, k])."""
    values = _rep_values_jit(estimator, self.loss, logits)
    if self.method == "candidates":
      return topk_candidates(values, logits, self.index, spec=self.spec, estimator=estimator,
                             k=k, m=self.m, min_count=self.min_count)
    return topk_chunked(values, self.table, estimator=estimator, k=k, spec=self.spec,
                        chunk_size=self.chunk_size)


_rep_values_jit = jax.jit(rep_values, static_argnums=(0, 1))


# ---------------------------------------------------------------------------------------
# Candidate decoding: score only the classes in each repetition's top-m buckets.


def _dedupe_topk(scores: jax.Array, ids: jax.Array, valid: jax.Array, k: int):
  """Top-k distinct ids from [n] candidates sorted by score (duplicates score the same);
  a slot that no distinct valid candidate fills gets id -1 and score -inf."""
  earlier = jnp.tril(ids[None, :] == ids[:, None], k=-1).any(axis=1)  # [n]: seen before?
  keep = valid & ~earlier
  s, pos = jax.lax.top_k(jnp.where(keep, scores, -jnp.inf), k)
  return s, jnp.where(keep[pos], ids[pos], -1)


@functools.partial(jax.jit, static_argnames=("spec", "estimator", "k", "m", "min_count",
                                             "query_batch"))
def topk_candidates(values: jax.Array, ranking: jax.Array, index: jax.Array, *,
                    spec: HashSpec, estimator: str, k: int, m: int, min_count: int = 1,
                    query_batch: int = 8):
  """Approximate top-k: exact scores for the classes of each repetition's top-m buckets.

  For each query, the m best buckets of every repetition (by ``ranking``) give up to R*m*S
  candidate classes through the padded inverted index; each candidate is hashed on device
  into all R repetitions and scored exactly with ``estimator``. A class can appear once per
  repetition, so the top k*R candidate slots hold at least k distinct classes; duplicates
  are removed among those. ``min_count`` > 1 keeps only classes found in at least that many
  repetitions' top-m lists (the official MACH approximate evaluator's filter). With m = B
  every class is a candidate and the result equals the exact top-k.

  Args:
    values: [R, b, B] per-repetition values for ``estimator`` (see ``rep_values``).
    ranking: [R, b, B] what orders buckets within a repetition (logits will do).
    index: int32 [R, B, S] classes per bucket, -1 padded (``hashing.build_padded_index``).
    spec: the hash spec (hashes candidates on device).
    query_batch: queries processed together; bounds memory to about
      query_batch * R * (R*m*S) int32.

  Returns:
    (scores [b, k], classes [b, k]); a slot without a distinct candidate (fewer than k
    were found) holds class -1 and score -inf.
  """
  R, b, B = values.shape
  S = index.shape[2]
  n = R * m * S
  if n < k:
    raise ValueError(f"m={m} buckets of at most S={S} classes in R={R} repetitions give "
                     f"{n} candidates, fewer than k={k}; raise m")
  kk = min(n, k * R)
  params = jnp.asarray(spec.params())

  def one(args):
    v, rank = args  # [R, B] each
    _, top = jax.lax.top_k(rank, m)  # [R, m]
    cands = jnp.take_along_axis(index, top[:, :, None], axis=1).reshape(-1)  # [n]
    valid = cands >= 0
    buckets = spec.buckets(cands, jnp, params=params)  # [R, n]
    gathered = jnp.take_along_axis(v, buckets, axis=1)  # [R, n]
    s = merge(estimator, gathered, B)
    if min_count > 1:
      in_top = jnp.zeros((R, B), bool).at[jnp.arange(R)[:, None], top].set(True)
      count = jnp.take_along_axis(in_top, buckets, axis=1).sum(axis=0)
      valid &= count >= min_count
    top_s, pos = jax.lax.top_k(jnp.where(valid, s, -jnp.inf), kk)
    return _dedupe_topk(top_s, cands[pos], valid[pos], k)

  per_query = (jnp.swapaxes(values, 0, 1), jnp.swapaxes(ranking, 0, 1))  # [b, R, B]
  return jax.lax.map(one, per_query, batch_size=min(query_batch, b))
