"""A query log's featurized chunks, written once to a temporary file for the later epochs.

Featurizing character n-grams costs from a tenth to half of an epoch, so a log is
featurized by its first complete pass only. Kept in memory, the featurized log would stay
resident for the whole run (Debian: 380 MB of CSR arrays, 1,909 MB peak RSS against 1,734
without it; experiments/bench/NOTES.md). Here it goes to an unlinked file (as tf.data's
``Dataset.cache(filename)`` does), and each later epoch reads it back a chunk at a time,
from the operating system's page cache while that holds it: the process keeps one chunk.

The file has no name: it disappears when it is closed or the process ends, crash included.
Put it on a disk, not a RAM-backed ``tmpfs`` (which would hold it in memory all the same).
"""

from __future__ import annotations

import os
import tempfile
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
    # Per chunk, for X then Y: (shape, [(offset, dtype, size) of data, indices, indptr]).
    self._index: list[list[tuple[tuple[int, int], list[tuple[int, str, int]]]]] = []
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
      entry.append((m.shape, where))
    self._index.append(entry)
    return True

  def _read(self, offset: int, dtype: str, size: int) -> np.ndarray:
    """``size`` values at ``offset``. pread keeps no file position, so two readers can
    interleave; it may return less than asked, hence the loop."""
    a = np.empty(size, np.dtype(dtype))
    view, done = memoryview(a).cast("B"), 0
    while done < a.nbytes:
      got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
      if got <= 0:
        raise OSError(f"featurized-log cache: read {done} of {a.nbytes} bytes at {offset}")
      done += got
    return a

  def __iter__(self) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix]]:
    self._file.flush()
    for entry in self._index:
      X, Y = (sp.csr_matrix(tuple(self._read(*w) for w in where), shape=shape)
              for shape, where in entry)
      yield X, Y

  def close(self) -> None:
    self._file.close()
