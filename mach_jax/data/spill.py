"""A query log's featurized chunks, written once to a temporary file for the later epochs.

Featurizing character n-grams costs from a tenth to half of an epoch, so a log is
featurized by its first complete pass only. Kept in memory, the featurized log would stay
resident for the whole run (Debian: 380 MB of CSR arrays, 1,909 MB peak RSS against 1,734
without it; experiments/bench/NOTES.md). Here it goes to an unlinked file (as tf.data's
``Dataset.cache(filename)`` does), and each later epoch reads it back a chunk at a time,
from the operating system's page cache while that holds it: the process keeps one chunk.
A shuffle window can also hold its chunks as ``ChunkRows`` and read only a batch's rows
(``ChunkFile.chunk(i)``), so that no epoch, the first included, holds a window of featurized
queries in memory.

The file has no name: it disappears when it is closed or the process ends, crash included.
Put it on a disk, not a RAM-backed ``tmpfs`` (which would hold it in memory all the same).
"""

from __future__ import annotations

import os
import tempfile
import weakref
from typing import Iterator

import numpy as np
import scipy.sparse as sp

_FIELDS = ("data", "indices", "indptr")


class ChunkFile:
  """(X, Y) pairs of CSR matrices appended to an unlinked file and read back in order.

  Args:
    directory: where the file is made (None: ``tempfile.gettempdir()``).
    limit_bytes: the most it may hold; ``append`` refuses a pair that would go past it.
  """

  def __init__(self, directory: str | None, limit_bytes: int):
    if directory is not None and not os.path.isdir(directory):
      raise FileNotFoundError(f"{directory}: no such directory for the featurized-log cache "
                              "(config.data.cache_dir)")
    self._file = tempfile.TemporaryFile(dir=directory)
    # Closed by close(), or when the last reference (this or a chunk's ChunkRows) goes.
    self._closer = weakref.finalize(self, self._file.close)
    # Per chunk, for X then Y: (shape, [(offset, dtype, size) of data, indices, indptr],
    # indptr): the row pointers stay in memory (4 bytes a row) for ``ChunkRows``.
    self._index: list[list[tuple[tuple[int, int], list[tuple[int, str, int]], np.ndarray]]] = []
    self.nbytes, self.limit_bytes = 0, int(limit_bytes)

  def __len__(self) -> int:
    return len(self._index)

  def append(self, X: sp.csr_matrix, Y: sp.csr_matrix) -> bool:
    """Write one chunk; False (nothing written) if it would pass ``limit_bytes``."""
    arrays = [getattr(m, f) for m in (X, Y) for f in _FIELDS]
    size = sum(a.nbytes for a in arrays)
    if self.nbytes + size > self.limit_bytes:
      return False
    entry = []
    for m in (X, Y):
      where = []
      for f in _FIELDS:
        a = np.ascontiguousarray(getattr(m, f))
        where.append((self.nbytes, a.dtype.str, a.size))
        self._file.seek(self.nbytes)
        self._file.write(memoryview(a).cast("B"))
        self.nbytes += a.nbytes
      entry.append((m.shape, where, m.indptr.copy()))
    self._index.append(entry)
    self._file.flush()  # Readable by pread at once (a window reads its rows back).
    return True

  def chunk(self, i: int) -> tuple[ChunkRows, ChunkRows]:
    """Chunk ``i``'s X and Y as ``ChunkRows``: row-indexable, read from the file."""
    return ChunkRows(self, i, 0), ChunkRows(self, i, 1)

  def _read(self, offset: int, dtype: str, size: int) -> np.ndarray:
    """``size`` values at ``offset``. pread keeps no file position, so two readers can
    interleave; it may return less than asked, hence the loop."""
    a = np.empty(size, np.dtype(dtype))
    self._read_into(memoryview(a).cast("B"), offset)
    return a

  def _read_into(self, view: memoryview, offset: int) -> None:
    done = 0
    while done < view.nbytes:
      got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
      if got <= 0:
        raise OSError(f"featurized-log cache: read {done} of {view.nbytes} bytes at {offset}")
      done += got

  def __iter__(self) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix]]:
    self._file.flush()
    for entry in self._index:
      X, Y = (sp.csr_matrix(tuple(self._read(*w) for w in where), shape=shape)
              for shape, where, _ in entry)
      yield X, Y

  def close(self) -> None:
    self._closer()


class ChunkRows:
  """One chunk's X (``which`` = 0) or Y (1) in a ``ChunkFile``, read a few rows at a time.

  ``chunk_rows[r]`` reads rows ``r`` (ints in [0, n), any order) into a CSR matrix, two
  ``pread`` calls per run of consecutive rows (its values, its column indices): the same
  matrix as the chunk's ``X[r]``. It keeps its file open.
  """

  def __init__(self, file: ChunkFile, i: int, which: int):
    self.file = file
    shape, self._where, self._indptr = file._index[i][which]
    self.shape = tuple(shape)

  def __getitem__(self, rows) -> sp.csr_matrix:
    rows = np.asarray(rows, np.int64).reshape(-1)
    if rows.size and not 0 <= rows.min() <= rows.max() < self.shape[0]:
      raise IndexError(f"rows {rows.min()}..{rows.max()} of a chunk of {self.shape[0]}")
    indptr = self._indptr
    lengths = indptr[rows + 1] - indptr[rows]
    out = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    # Runs of consecutive rows are consecutive in the file: one read each.
    first = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
    last = np.append(first[1:], rows.size) - 1
    spans = [(int(indptr[rows[a]]), int(out[a]), int(out[b + 1] - out[a]))
             for a, b in zip(first, last) if out[b + 1] > out[a]]
    arrays = []
    for offset, dtype, _ in self._where[:2]:  # data, then indices.
      a = np.empty(int(out[-1]), np.dtype(dtype))
      view, item = memoryview(a).cast("B"), a.itemsize
      for start, at, n in spans:
        self.file._read_into(view[at * item:(at + n) * item], offset + start * item)
      arrays.append(a)
    return sp.csr_matrix((arrays[0], arrays[1], out.astype(indptr.dtype)),
                         shape=(rows.size, self.shape[1]))
