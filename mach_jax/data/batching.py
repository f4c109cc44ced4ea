"""Fixed-shape batches from CSR data, so the jitted step compiles only a handful of times.

A batch of b points is a dict of NumPy arrays:

  indices  int32 [T]   feature ids of all nonzeros of the batch, row after row
  values   float32 [T] their values (0 for padding)
  segments int32 [T]   the row (0..b-1) each nonzero belongs to (padding points at row 0)
  labels   int32 [b, Lw] label ids, padded with -1
  mask     float32 [b] 1 for real points, 0 for padding rows (the last, partial batch)

T and Lw have floors per data set (``Widths.for_data``): T's covers a batch of the mean
nonzeros, Lw is the largest label count rounded up to a power of two. A batch that needs
more nonzeros gets the next bucketed width (eight steps per power of two, so padding stays
under 12.5%), and nothing is ever truncated. The step compiles once per distinct width, a
few times per run (Debian's long texts, batch 256: 73,728 for 98% of the batches, 81,920
for the rest), where a floor of the mean plus six standard deviations compiled once but
padded every batch to 98,304 (experiments/bench/NOTES.md).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator

import numpy as np
import scipy.sparse as sp

STEPS_PER_OCTAVE = 8


def round_up_width(n: int, minimum: int = 8, steps_per_octave: int = STEPS_PER_OCTAVE) -> int:
  """Smallest width >= n of the form m * 2^e with m in {steps..2*steps} (few distinct values)."""
  n = max(int(n), minimum)
  e = max(int(n - 1).bit_length() - int(steps_per_octave).bit_length(), 0)
  step = 1 << e
  return -(-n // step) * step


def next_pow2(n: int, minimum: int = 1) -> int:
  n = max(int(n), minimum)
  return 1 << (n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class Widths:
  """Minimum padded widths of a batch: nonzeros T and labels per point Lw."""

  nnz: int = 256
  labels: int = 1

  @classmethod
  def for_data(cls, X: sp.csr_matrix, Y: sp.csr_matrix, batch_size: int) -> "Widths":
    row_nnz = np.diff(X.indptr).astype(np.float64)
    bound = np.sort(row_nnz)[::-1][:batch_size].sum()  # No batch can need more.
    nnz = round_up_width(min(bound, batch_size * row_nnz.mean()))
    labels = next_pow2(np.diff(Y.indptr).max() if Y.shape[0] else 1)
    return cls(nnz=nnz, labels=labels)


def make_batch(X: sp.csr_matrix, Y: sp.csr_matrix, rows: np.ndarray, batch_size: int,
               widths: Widths = Widths(), dense: bool = False,
               num_shards: int = 1) -> dict[str, np.ndarray]:
  """Pack ``rows`` of (X, Y) into one padded batch of ``batch_size`` points.

  With ``num_shards`` = S > 1 (data parallelism) the batch is S equal blocks of
  b/S consecutive rows: ``labels`` and ``mask`` split evenly on their first axis, and the
  flattened nonzeros are S blocks of T/S entries, block s holding the nonzeros of row block
  s with ``segments`` local to the block (0..b/S-1). Splitting every array on its leading
  axis into S parts then hands each device a self-contained sub-batch. ``widths.nnz`` is
  per block.

  With ``dense=True`` the features come as ``dense`` float32 [b, D] instead of the
  flattened nonzeros (for the dense-input model).
  """
  rows = np.asarray(rows)
  n = rows.size
  if n > batch_size:
    raise ValueError(f"{n} rows do not fit in batch_size={batch_size}")
  if batch_size % num_shards:
    raise ValueError(f"batch_size={batch_size} is not divisible by num_shards={num_shards}")
  Xb, Yb = X[rows], Y[rows]
  nlab = Yb.indptr[1:] - Yb.indptr[:-1]
  Lw = max(widths.labels, next_pow2(nlab.max() if n else 1))
  labels = np.full((batch_size, Lw), -1, np.int32)
  if Yb.nnz:
    r = np.repeat(np.arange(n), nlab)
    c = np.arange(Yb.nnz) - np.repeat(Yb.indptr[:-1], nlab)
    labels[r, c] = Yb.indices
  mask = np.zeros(batch_size, np.float32)
  mask[:n] = 1.0
  if dense:
    feats = np.zeros((batch_size, X.shape[1]), np.float32)
    feats[:n] = Xb.toarray()
    return dict(dense=feats, labels=labels, mask=mask)
  local = batch_size // num_shards
  bounds = [min(s * local, n) for s in range(num_shards + 1)]
  block_nnz = [Xb.indptr[bounds[s + 1]] - Xb.indptr[bounds[s]] for s in range(num_shards)]
  T = max(widths.nnz, round_up_width(max(block_nnz)))
  indices = np.zeros((num_shards, T), np.int32)
  values = np.zeros((num_shards, T), np.float32)
  segments = np.zeros((num_shards, T), np.int32)
  row_nnz = Xb.indptr[1:] - Xb.indptr[:-1]
  for s in range(num_shards):
    lo, hi = Xb.indptr[bounds[s]], Xb.indptr[bounds[s + 1]]
    indices[s, :hi - lo] = Xb.indices[lo:hi]
    values[s, :hi - lo] = Xb.data[lo:hi]
    segments[s, :hi - lo] = np.repeat(np.arange(bounds[s + 1] - bounds[s], dtype=np.int32),
                                      row_nnz[bounds[s]:bounds[s + 1]])
  return dict(indices=indices.reshape(-1), values=values.reshape(-1),
              segments=segments.reshape(-1), labels=labels, mask=mask)


def widened(batch: dict[str, np.ndarray], num_shards: int = 1) -> dict[str, np.ndarray]:
  """``batch`` padded to the next width of nonzeros (``round_up_width(T + 1)`` per shard):
  the layout of the next wider batch ``make_batch`` can give, for compiling its step ahead.
  A dense batch has no such width and is refused."""
  if "indices" not in batch:
    raise ValueError("a dense batch ([b, D] features) has no width of nonzeros to widen")
  T = batch["indices"].size // num_shards
  pad = round_up_width(T + 1) - T

  def wider(x):
    return np.pad(x.reshape(num_shards, T), ((0, 0), (0, pad))).reshape(-1)
  return {k: wider(v) if k in ("indices", "values", "segments") else v
          for k, v in batch.items()}


def pack_features(X: sp.csr_matrix, batch_size: int, nnz: int,
                  dense: bool = False) -> dict[str, np.ndarray]:
  """Every row of X as one padded batch of features, for prediction (no labels).

  The serving path's packing: X's arrays are copied as they are, with none of
  ``make_batch``'s row selection. ``nnz`` is T, at least X.nnz. Returns ``indices``,
  ``values``, ``segments`` [T] (or ``dense`` [b, D]) and ``mask`` [b].
  """
  n = X.shape[0]
  if n > batch_size:
    raise ValueError(f"{n} rows do not fit in batch_size={batch_size}")
  mask = np.zeros(batch_size, np.float32)
  mask[:n] = 1.0
  if dense:
    feats = np.zeros((batch_size, X.shape[1]), np.float32)
    feats[:n] = X.toarray()
    return dict(dense=feats, mask=mask)
  if X.nnz > nnz:
    raise ValueError(f"{X.nnz} nonzeros do not fit in a batch of width {nnz}")
  indices = np.zeros(nnz, np.int32)
  values = np.zeros(nnz, np.float32)
  segments = np.zeros(nnz, np.int32)
  indices[:X.nnz] = X.indices
  values[:X.nnz] = X.data
  segments[:X.nnz] = np.repeat(np.arange(n, dtype=np.int32), np.diff(X.indptr))
  return dict(indices=indices, values=values, segments=segments, mask=mask)


def batch_rows(num_points: int, batch_size: int, *, shuffle: bool, seed: int = 0,
               epoch: int = 0) -> list[np.ndarray]:
  """Row ids of each batch for one epoch; the permutation depends only on (seed, epoch)."""
  order = np.arange(num_points)
  if shuffle:
    order = np.random.default_rng([seed, epoch]).permutation(num_points)
  return [order[i:i + batch_size] for i in range(0, num_points, batch_size)]


def iterate_batches(X, Y, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                    widths: Widths | None = None, dense: bool = False, num_shards: int = 1,
                    start: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """The batches of one epoch, from the ``start``-th on (to resume mid-epoch)."""
  if widths is None:
    widths = Widths.for_data(X, Y, batch_size // num_shards)
  for rows in batch_rows(X.shape[0], batch_size, shuffle=shuffle, seed=seed, epoch=epoch)[start:]:
    yield make_batch(X, Y, rows, batch_size, widths, dense=dense, num_shards=num_shards)


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Produce items in a background thread so host batching overlaps device work."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def worker():
    try:
      for item in iterator:
        q.put(item)
    except BaseException as e:  # Re-raised in the consumer with its traceback.
      q.put(e)
    q.put(done)

  threading.Thread(target=worker, daemon=True).start()
  while True:
    item = q.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item
