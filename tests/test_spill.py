"""The featurized-log cache's file: what goes in comes back, in order, bit for bit."""

import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax.data.spill import ChunkFile


def _pair(seed, n):
  X = sp.random(n, 40, density=0.3, format="csr", random_state=seed, dtype=np.float32)
  Y = sp.random(n, 9, density=0.2, format="csr", random_state=seed + 1, dtype=np.float32)
  return X, Y


def _same(a, b):
  assert a.shape == b.shape
  for f in ("data", "indices", "indptr"):
    got, want = getattr(a, f), getattr(b, f)
    assert got.dtype == want.dtype, f
    np.testing.assert_array_equal(got, want, err_msg=f)


def test_chunks_come_back_in_order_bit_for_bit(tmp_path):
  pairs = [_pair(i, n) for i, n in enumerate((5, 1, 17, 0, 9))]
  spill = ChunkFile(str(tmp_path), 1 << 20)
  assert all(spill.append(X, Y) for X, Y in pairs)
  assert len(spill) == 5 and list(tmp_path.iterdir()) == []  # Unlinked from the start.
  for _ in range(2):  # Every pass reads the same.
    for (X, Y), (X2, Y2) in zip(spill, pairs, strict=True):
      _same(X, X2)
      _same(Y, Y2)
  first, second = iter(spill), iter(spill)  # Two readers do not disturb each other.
  next(first)
  _same(next(second)[0], pairs[0][0])
  _same(next(first)[0], pairs[1][0])
  spill.close()


def test_a_chunk_past_the_limit_is_refused_and_nothing_written():
  X, Y = _pair(0, 20)
  size = sum(getattr(m, f).nbytes for m in (X, Y) for f in ("data", "indices", "indptr"))
  spill = ChunkFile(None, 2 * size - 1)
  assert spill.append(X, Y) and not spill.append(X, Y)
  assert len(spill) == 1 and spill.nbytes == size
  spill.close()


def test_a_missing_directory_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.*config.data.cache_dir"):
    ChunkFile(str(tmp_path / "nowhere"), 1 << 20)


def test_a_chunks_rows_read_from_the_file_are_its_rows(tmp_path):
  """ChunkRows[r] is X[r] for any order: runs of consecutive rows, repeats of none, rows
  with no nonzeros, no rows at all."""
  X, Y = _pair(3, 50)
  X = sp.csr_matrix(sp.diags((np.arange(50) != 7).astype(np.float32)) @ X)  # Row 7 empty.
  assert X[7].nnz == 0
  spill = ChunkFile(str(tmp_path), 1 << 20)
  spill.append(*_pair(9, 4))  # Chunk 1 does not start at offset 0.
  spill.append(X, Y)
  Xr, Yr = spill.chunk(1)
  assert Xr.shape == X.shape and Yr.shape == Y.shape
  rng = np.random.default_rng(0)
  for rows in (rng.permutation(50), np.arange(10, 30), [7], [49, 0, 1, 2, 7, 8, 3],
               np.zeros(0, np.int64)):
    _same(Xr[rows], X[rows])
    _same(Yr[rows], Y[rows])
  for bad in ([50], [-1, 3]):
    with pytest.raises(IndexError, match="of a chunk of 50"):
      Xr[bad]
  spill.close()


def test_the_file_stays_open_while_a_chunk_is_held_and_closes_after(tmp_path):
  """A window may still hold chunks of a file the log has let go (a pass stopped early,
  the cache full): those chunks stay readable, and the file closes with the last one."""
  X, Y = _pair(1, 12)
  spill = ChunkFile(str(tmp_path), 1 << 20)
  spill.append(X, Y)
  file = spill._file
  Xr = spill.chunk(0)[0]
  del spill
  _same(Xr[[3, 4, 0]], X[[3, 4, 0]])
  assert not file.closed
  del Xr
  assert file.closed
