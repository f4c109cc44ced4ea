"""Fixed-shape batches from CSR data, so the jitted step compiles only a handful of times.

A batch of b points is a dict of NumPy arrays:

  indices  int32 [T]   feature ids of all nonzeros of the batch, row after row
  values   float32 [T] their values (0 for padding)
  segments int32 [T]   the row (0..b-1) each nonzero belongs to (padding points at row 0)
  labels   int32 [b, Lw] label ids, padded with -1
  mask     float32 [b] 1 for real points, 0 for padding rows (the last, partial batch)

and, when ``Widths.distinct`` > 0 (training with row-sparse Adam), the rows of the input
table the batch touches, found on the host while the device runs the previous step:

  rows     int32 [U]   the distinct feature ids of the nonzeros (value != 0), ascending, then
                       D (the number of features) as padding; U > the distinct count
  local    int32 [T]   the slot in ``rows`` of each nonzero's id; U - 1 (padding) for the rest

T, Lw and U have floors per data set (``Widths.for_data``, ``distinct_floor``): T's covers
a batch of the mean nonzeros, Lw is the largest label count rounded up to a power of two,
U covers the distinct ids of a few random batches with a margin. A batch that needs
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
HOST_ROWS = ("rows", "local")  # The keys ``touched_rows`` adds to a training batch.


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
  """Minimum padded widths of a batch: nonzeros T, labels per point Lw and, when > 0,
  distinct rows U (0: the batch carries no ``rows`` / ``local``)."""

  nnz: int = 256
  labels: int = 1
  distinct: int = 0

  @classmethod
  def for_data(cls, X: sp.csr_matrix, Y: sp.csr_matrix, batch_size: int,
               distinct: bool = False) -> "Widths":
    """Floors for batches of ``batch_size`` rows of (X, Y); U's too when ``distinct``."""
    row_nnz = np.diff(X.indptr).astype(np.float64)
    bound = np.sort(row_nnz)[::-1][:batch_size].sum()  # No batch can need more.
    nnz = round_up_width(min(bound, batch_size * row_nnz.mean()))
    labels = next_pow2(np.diff(Y.indptr).max() if Y.shape[0] else 1)
    return cls(nnz=nnz, labels=labels,
               distinct=distinct_floor(X, batch_size) if distinct else 0)


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

  With ``widths.distinct`` > 0 the batch also holds ``rows`` [S * U] and ``local`` [S * T]
  (``touched_rows``), block s's over block s's nonzeros, U the same for every block.
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
  batch = dict(indices=indices.reshape(-1), values=values.reshape(-1),
               segments=segments.reshape(-1), labels=labels, mask=mask)
  if widths.distinct:
    # A batch wider than the floor of nonzeros gets at least the next width of rows: the
    # layouts then come in the order ``widened`` compiles them ahead.
    floor = widths.distinct if T == widths.nnz else round_up_width(widths.distinct + 1)
    batch.update(touched_rows(indices, values, X.shape[1], floor))
  return batch


def touched_rows(indices: np.ndarray, values: np.ndarray, num_rows: int,
                 floor: int) -> dict[str, np.ndarray]:
  """The distinct rows each block of a batch touches, and each nonzero's slot among them.

  The host's side of row-sparse Adam: what ``row_sparse_adam.touched_rows`` computes on the device,
  with a width U that follows the batch's distinct ids instead of its T nonzeros (a step's
  gathers and scatters of table and moment rows cost by the rows, padding included;
  experiments/bench/NOTES.md).

  Args:
    indices, values: [S, T] the nonzeros of S blocks; value 0 is padding.
    num_rows: D, the id that pads ``rows``.
    floor: the least U (``distinct_floor``); a block with more distinct ids widens U to the
      next ``round_up_width`` above its count, so no id is ever dropped.

  Returns:
    ``rows`` int32 [S * U] and ``local`` int32 [S * T] (see the module docstring).
  """
  S, T = indices.shape
  found = [np.unique(indices[s][values[s] != 0], return_inverse=True) for s in range(S)]
  U = max(floor, round_up_width(max(ids.size for ids, _ in found) + 1))
  rows = np.full((S, U), num_rows, np.int32)
  local = np.full((S, T), U - 1, np.int32)
  for s, (ids, slot) in enumerate(found):
    rows[s, :ids.size] = ids
    local[s, values[s] != 0] = slot
  return dict(zip(HOST_ROWS, (rows.reshape(-1), local.reshape(-1))))


def distinct_floor(X: sp.csr_matrix, batch_size: int, num_batches: int = 8,
                   margin: float = 0.05, seed: int = 0) -> int:
  """A floor for U: the most distinct ids (of nonzero values) among ``num_batches`` batches
  of random rows of X, ``margin`` more, and the padding slot, rounded up to a width.

  Shuffled batches of one set touch about as many rows each (XC WordNet, batch 256: 3,292
  to 3,841 over an epoch), so nearly all share this U (one compiled step) and the rest get
  a wider one. A floor from the set's first rows instead (similar points, fewer ids) gave
  five widths in one WordNet epoch.
  """
  rng = np.random.default_rng(seed)
  count = 0
  for _ in range(num_batches):
    Xb = X[rng.choice(X.shape[0], min(batch_size, X.shape[0]), replace=False)]
    count = max(count, np.unique(Xb.indices[Xb.data != 0]).size)
  return round_up_width(int(np.ceil(count * (1 + margin))) + 1)


def widened(batch: dict[str, np.ndarray], num_shards: int = 1,
            nonzeros: bool = True) -> dict[str, np.ndarray]:
  """``batch`` padded to the next width of nonzeros (``round_up_width(T + 1)`` per shard)
  and of rows when it has them: the layout of the next wider batch ``make_batch`` can give,
  for compiling its step ahead. ``nonzeros=False`` widens the rows only (a batch of as
  many nonzeros touching more rows). A dense batch has no such width and is refused."""
  if "indices" not in batch:
    raise ValueError("a dense batch ([b, D] features) has no width of nonzeros to widen")

  def wider(x, fill=0):
    n = x.size // num_shards
    pad = round_up_width(n + 1) - n
    return np.pad(x.reshape(num_shards, n), ((0, 0), (0, pad)),
                  constant_values=fill).reshape(-1)
  out = {k: wider(v) if nonzeros and k in ("indices", "values", "segments", "local") else v
         for k, v in batch.items()}
  if "rows" in batch:  # Padded with padding rows; every slot ``local`` names stays valid.
    out["rows"] = wider(batch["rows"], fill=batch["rows"][-1])
  return out


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
