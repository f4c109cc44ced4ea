"""Training straight from a query log on disk: ``query<TAB>id1,id2,...`` per line.

A log of tens of millions of queries never has to fit in memory. ``QueryLog`` makes one
cheap pass at start-up (line count, label counts for propensities, the widest label list;
every line is validated there, ids and query length included, so a bad line fails before
training, naming file and line),
then each epoch streams the file again: it reads ``read_chunk`` lines, featurizes them
with the model's ``TextFeaturizer``, and shuffles within a window of ``buffer_size``
queries (a bounded shuffle buffer, as in tf.data: queries far apart in the file never meet
in a batch, so a log sorted by time should be pre-shuffled once or given a large buffer).
The rows left over at the end of a window are carried into the next one, so an epoch yields
exactly ceil(N / batch_size) batches and no query is dropped.

A log whose featurized matrices fit in ``cache_mb`` is featurized once, by the first
complete pass, which writes them to an unlinked file in ``cache_dir``
(``mach_jax.data.spill``); later epochs read the same chunks back in the same order, so the
same batches. Featurizing character n-grams is slow next to a training step (text WordNet:
about half of an epoch's time). While the cache holds them, a window's chunks stay in the
file and each batch reads its rows from there, so memory holds one chunk being featurized
and the batches in flight. Without the cache, memory is bounded by the window: about
``buffer_size`` x (nonzeros per query) x 8 bytes plus the query strings of one chunk.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from mach_jax import host_memory
from mach_jax.data import batching, validation
from mach_jax.data.lines import iter_text_lines
from mach_jax.data.spill import ChunkFile, ChunkRows
from mach_jax.data.text import TextFeaturizer
from mach_jax.data.xc import XCData

Rows = sp.csr_matrix | ChunkRows  # What a shuffle window's chunk can be: ``rows`` -> CSR.


class QueryLogError(ValueError):
  """A malformed query log; the message names the file and the 1-based line."""


class RowStack:
  """The rows of several CSR matrices one after another, without copying them into one.

  A shuffle window is its chunks (and the rows carried over from the last window): stacking
  them into one matrix would hold the window's featurized queries twice while its batches
  are made (text WordNet, one epoch: 91 MB more peak RSS; experiments/bench/NOTES.md).
  ``stack[rows]`` copies only those rows, in their order.

  Args:
    parts: CSR matrices, or ``ChunkRows`` read from the cache file, with the same number
      of columns.
  """

  def __init__(self, parts: list[Rows]):
    self.parts = list(parts)
    self.starts = np.cumsum([0] + [p.shape[0] for p in self.parts])
    self.shape = (int(self.starts[-1]), self.parts[0].shape[1])

  def __getitem__(self, rows) -> sp.csr_matrix:
    rows = np.asarray(rows, np.int64)
    which = np.searchsorted(self.starts, rows, side="right") - 1
    used = np.unique(which)
    if used.size <= 1:
      part = int(used[0]) if used.size else 0
      return self.parts[part][rows - self.starts[part]]
    order = np.argsort(which, kind="stable")  # The rows grouped by part, each in its order.
    grouped, owner = rows[order], which[order]
    pieces = [self.parts[p][grouped[owner == p] - self.starts[p]] for p in used]
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    return sp.vstack(pieces, format="csr")[position]


_IDS = re.compile(r"-?[0-9]+(?:,-?[0-9]+)*")


def _parse_ids(field: str, where: str, num_labels: int) -> list[int]:
  """The ids of a line's second field, each once, in their first order."""
  if not field:
    return []
  if not _IDS.fullmatch(field):
    raise QueryLogError(f"{where}: product ids {field[:80]!r} are not comma-separated "
                        "integers")
  ids = list(dict.fromkeys(int(x) for x in field.split(",")))
  bad = [i for i in ids if not 0 <= i < num_labels]
  if bad:
    raise QueryLogError(f"{where}: product id {bad[0]} is outside [0, {num_labels})")
  return ids


def _split(line: str, where: str) -> tuple[str, str]:
  parts = line.split("\t")
  if len(parts) != 2:
    raise QueryLogError(f"{where}: expected 'query<TAB>ids', found {len(parts)} tab-separated "
                        f"fields in {line[:80]!r}")
  return parts[0], parts[1]


def read_lines(path: str, num_labels: int, read_chunk: int
               ) -> Iterator[tuple[list[str], list[list[int]], int]]:
  """(queries, label lists, line number of the first) per chunk of ``read_chunk`` lines.

  Lines as ``mach_jax.data.lines`` reads them (UTF-8, "\n" ends, a BOM skipped).
  """
  queries, labels, first = [], [], 1
  for lineno, line in iter_text_lines(path, QueryLogError):
    where = f"{path}:{lineno}"
    query, ids = _split(line, where)
    queries.append(query)
    labels.append(_parse_ids(ids, where, num_labels))
    if len(queries) == read_chunk:
      yield queries, labels, first
      queries, labels, first = [], [], lineno + 1
  if queries:
    yield queries, labels, first


def label_matrix(labels: list[list[int]], num_labels: int) -> sp.csr_matrix:
  """CSR [n, K] with a 1 per (query, product); duplicate ids in a line count once."""
  lengths = np.fromiter((len(l) for l in labels), np.int64, len(labels))
  indptr = np.concatenate([[0], np.cumsum(lengths)])
  cols = np.fromiter((i for l in labels for i in l), np.int64, int(indptr[-1]))
  Y = sp.csr_matrix((np.ones(cols.size, np.float32), cols, indptr),
                    shape=(len(labels), num_labels))
  Y.sum_duplicates()
  Y.data[:] = 1.0
  return Y


class QueryLog:
  """A TSV query log read in chunks: the training source for text data.

  It offers the same methods as ``XCData`` for the training loop (``label_counts``,
  ``widths``, ``first_batch``, ``batches``) and ``to_xc`` for a split small enough to hold
  (the held-out queries).

  ``holdout=(fraction, seed)`` carves the validation slice (``data.validation``) out of the
  file: ``part='train'`` reads every other line, ``part='validation'`` only the held-out ones.
  ``cache_mb``: keep the featurized chunks, when they fit in that many MB, in a temporary
  file in ``cache_dir`` (None: the system's temporary directory) for later passes (0: never).
  """

  def __init__(self, path: str, featurizer: TextFeaturizer, num_labels: int, *,
               buffer_size: int = 100_000, read_chunk: int = 8192,
               holdout: tuple[float, int] = (0.0, 0), part: str = "train",
               cache_mb: float = 0, cache_dir: str | None = None):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no such query log")
    if buffer_size < 1 or read_chunk < 1:
      raise ValueError(f"buffer_size={buffer_size} and read_chunk={read_chunk} must be >= 1")
    if part not in ("train", "validation"):
      raise ValueError(f"part={part!r}: expected 'train' or 'validation'")
    self.path, self.featurizer, self.num_labels = path, featurizer, int(num_labels)
    self.buffer_size, self.read_chunk = int(buffer_size), int(read_chunk)
    self.holdout, self.part = (float(holdout[0]), int(holdout[1])), part
    self.cache_bytes, self.cache_dir = int(cache_mb * 2**20), cache_dir
    self._cached: ChunkFile | None = None
    counts = np.zeros(self.num_labels, np.int64)
    n, widest = 0, 0
    for queries, labels, lines in self._lines(1 << 16):
      lengths = np.fromiter(map(len, queries), np.int64, len(queries))
      if lengths.max() > featurizer.max_chars:  # Fail now, not hours into training.
        i = int(np.argmax(lengths > featurizer.max_chars))
        raise QueryLogError(f"{path}:{lines[i]}: query of {lengths[i]} characters exceeds "
                            f"featurizer.max_chars={featurizer.max_chars}")
      flat = np.fromiter((i for l in labels for i in l), np.int64)
      counts += np.bincount(flat, minlength=self.num_labels)
      widest = max(widest, max(len(l) for l in labels))
      n += len(labels)
    if n == 0:
      raise QueryLogError(f"{path}: no queries" + (
          f" in its {part} part (config.data.validation_fraction={holdout[0]} of its lines "
          "held out): add queries, or change validation_fraction" if holdout[0] else ""))
    self.num_points, self._counts, self.max_labels = n, counts, widest

  @property
  def num_features(self) -> int:
    return self.featurizer.num_features

  def label_counts(self) -> np.ndarray:
    return self._counts

  def _lines(self, read_chunk: int) -> Iterator[tuple[list[str], list[list[int]], list[int]]]:
    """(queries, label lists, their 1-based line numbers) of this part, per chunk of lines."""
    for queries, labels, first in read_lines(self.path, self.num_labels, read_chunk):
      lines = np.arange(first, first + len(queries))
      held = validation.held_out(lines - 1, *self.holdout)
      keep = np.flatnonzero(held if self.part == "validation" else ~held)
      if keep.size == len(queries):
        yield queries, labels, lines.tolist()
      elif keep.size:
        yield [queries[i] for i in keep], [labels[i] for i in keep], lines[keep].tolist()

  def texts(self) -> Iterator[list[str]]:
    """The queries of this part, a chunk of lines at a time (e.g. to fit an idf)."""
    for queries, _, _ in self._lines(self.read_chunk):
      yield queries

  def chunks(self) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix]]:
    """(X, Y) per chunk of lines, in file order, featurized (or from the cache)."""
    return self._pass(rows_from_file=False)

  def _pass(self, rows_from_file: bool) -> Iterator[tuple[Rows, Rows]]:
    """``chunks``; with ``rows_from_file``, a chunk held by the cache file comes as its
    ``ChunkRows`` (read a batch's rows at a time), the first pass's as soon as written."""
    if self._cached is not None:
      if rows_from_file:
        yield from map(self._cached.chunk, range(len(self._cached)))
      else:
        yield from self._cached
      return
    spill = ChunkFile(self.cache_dir, self.cache_bytes) if self.cache_bytes else None
    for queries, labels, lines in self._lines(self.read_chunk):
      where = [f"{self.path}:{i}" for i in lines]
      X, Y = self.featurizer.transform(queries, where), label_matrix(labels, self.num_labels)
      if spill is not None and not spill.append(X, Y):  # Too large: featurize every pass.
        spill, self.cache_bytes = None, 0  # Closed once no window holds a chunk of it.
      chunk = spill.chunk(len(spill) - 1) if rows_from_file and spill is not None else (X, Y)
      del X, Y  # Not held here while the caller's window is made of ChunkRows.
      yield chunk
    # Only a complete pass fills the cache; a pass stopped early (the first window, a
    # resumed epoch) lets its file go, and it is closed with its last chunk.
    self._cached = spill

  def to_xc(self) -> XCData:
    """All of it in memory (for a held-out split)."""
    parts = list(self.chunks())
    return XCData(X=sp.vstack([p[0] for p in parts], format="csr"),
                  Y=sp.vstack([p[1] for p in parts], format="csr"))

  def _head(self) -> XCData:
    """The first window's queries (at most 65,536), featurized once for widths and the
    first batch, and kept until ``batches`` starts."""
    if getattr(self, "_head_data", None) is not None:
      return self._head_data
    parts, n = [], 0
    for X, Y in self.chunks():
      parts.append((X, Y))
      n += X.shape[0]
      if n >= min(self.buffer_size, 65_536):
        break
    self._head_data = XCData(X=sp.vstack([p[0] for p in parts], format="csr"),
                             Y=sp.vstack([p[1] for p in parts], format="csr"))
    return self._head_data

  def widths(self, batch_size: int, distinct: bool = False) -> batching.Widths:
    """Widths from the first window; a rarer, wider batch later gets the next width."""
    head = self._head()
    w = batching.Widths.for_data(head.X, head.Y, batch_size, distinct)
    return dataclasses.replace(w, labels=batching.next_pow2(max(self.max_labels, 1)))

  def first_batch(self, batch_size: int, widths: batching.Widths, dense: bool = False,
                  num_shards: int = 1) -> dict[str, np.ndarray]:
    head = self._head()
    rows = np.arange(min(batch_size, head.num_points))
    return batching.make_batch(head.X, head.Y, rows, batch_size, widths, dense=dense,
                               num_shards=num_shards)

  def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0,
              widths: batching.Widths | None = None, dense: bool = False,
              num_shards: int = 1, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The ceil(N / batch_size) batches of one epoch, from the ``start``-th on.

    The order depends only on (seed, epoch, buffer_size, read_chunk), so resuming at
    ``start`` replays the same batches (the skipped ones are read and featurized again,
    not trained on).
    """
    widths = widths or self.widths(batch_size // num_shards)
    self._head_data = None  # Set-up is over; the first window is read again below.
    emitted = 0
    carry: XCData | None = None
    window: list[tuple[Rows, Rows]] = []
    count, index = 0, 0

    def flush(parts, carry, index, last):
      Xs = ([carry.X] if carry is not None else []) + [p[0] for p in parts]
      Ys = ([carry.Y] if carry is not None else []) + [p[1] for p in parts]
      X, Y = RowStack(Xs), RowStack(Ys)
      n = X.shape[0]
      order = (np.random.default_rng([seed, epoch, index]).permutation(n) if shuffle
               else np.arange(n))
      full = n if last else n // batch_size * batch_size
      batches = [order[i:i + batch_size] for i in range(0, full, batch_size)]
      rest = order[full:]
      return X, Y, batches, (XCData(X=X[rest], Y=Y[rest]) if rest.size else None)

    def emit(X, Y, rows_list):
      nonlocal emitted
      for rows in rows_list:
        if emitted >= start:
          yield batching.make_batch(X, Y, rows, batch_size, widths, dense=dense,
                                    num_shards=num_shards)
        emitted += 1

    for chunk in self._pass(rows_from_file=True):
      window.append(chunk)
      count += chunk[0].shape[0]
      del chunk
      if count >= self.buffer_size:
        X, Y, rows_list, carry = flush(window, carry, index, last=False)
        window, count, index = [], 0, index + 1
        yield from emit(X, Y, rows_list)
        # Let this window go before the next is read and featurized (one window held,
        # not two), and hand its freed pages, and its batches', back to the system
        # (experiments/bench/NOTES.md).
        del X, Y, rows_list
        host_memory.release()
    if window or carry is not None:
      yield from emit(*flush(window, carry, index, last=True)[:3])
