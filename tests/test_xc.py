import gzip
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax.data.xc import XCFormatError, read_xc, write_xc
from tests.helpers import shared_file

GOOD = "3 6 4\n0,2 0:1.5 5:2\n 1:0.5\n3 4:1 2:-1\n"


def _write(tmp_path, text, name="d.txt", gz=False):
  path = tmp_path / name
  if gz:
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_reads_plain_and_gzip_keeping_rows_without_labels(tmp_path, gz):
  d = read_xc(_write(tmp_path, GOOD, "d.txt.gz" if gz else "d.txt", gz))
  assert d.X.shape == (3, 6) and d.Y.shape == (3, 4)
  np.testing.assert_allclose(d.X.toarray(), [[1.5, 0, 0, 0, 0, 2], [0, .5, 0, 0, 0, 0],
                                             [0, 0, -1, 0, 1, 0]])
  np.testing.assert_array_equal(d.Y.toarray(), [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]])


def test_header_sizes_are_kept_not_inferred(tmp_path):
  d = read_xc(_write(tmp_path, "1 100 50\n0 1:1\n"))
  assert (d.num_features, d.num_labels) == (100, 50)


@pytest.mark.parametrize("text, match", [
    ("3 6\n0 1:1\n", r"d.txt:1: expected header"),
    ("x 6 4\n", r"d.txt:1: expected header"),
    ("2 6 4\n0 1:1\n0 6:1\n", r"d.txt:3: feature 6 outside \[0, 6\)"),
    ("2 6 4\n0 1:1\n4 2:1\n", r"d.txt:3: label 4 outside \[0, 4\)"),
    ("2 6 4\n0 1:1\n0 2-1\n", r"d.txt:3: bad feature token"),
    ("2 6 4\n0 1:1\n0 2:abc\n", r"d.txt:3: bad feature token"),
    ("2 6 4\n0 1:1\na,b 2:1\n", r"d.txt:3: bad label field"),
    ("2 6 4\n0 1:1 1:2\n", r"d.txt:2: feature 1 appears twice"),
    ("2 6 4\n0 1:nan\n", r"d.txt:2: feature 1 has non-finite value"),
    ("3 6 4\n0 1:1\n1 2:1\n", r"d.txt:3: header says N=3 points, file has 2"),
    ("1 6 4\n0 1:1\n1 2:1\n", r"header says N=1 points, file has 2"),
    ("2 6 4\n0 1:1\n0 1:2:3 4\n", r"d.txt:3: bad feature token '1:2:3'"),
    ("2 6 4\n0 1:1\n0 -1:2\n", r"d.txt:3: feature -1 outside"),
    ("2 6 4\n0 1:1\n0 2:inf\n", r"d.txt:3: feature 2 has non-finite value"),
])
def test_bad_input_names_file_and_line(tmp_path, text, match):
  with pytest.raises(XCFormatError, match=match):
    read_xc(_write(tmp_path, text))


def test_write_then_read_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  X = sp.random(20, 30, density=0.2, format="csr", random_state=1, dtype=np.float32)
  Y = sp.csr_matrix((rng.random((20, 7)) < 0.3).astype(np.float32))
  path = str(tmp_path / "rt.txt.gz")
  write_xc(path, X, Y)
  d = read_xc(path)
  np.testing.assert_allclose(d.X.toarray(), X.toarray(), rtol=1e-5)
  np.testing.assert_array_equal(d.Y.toarray(), Y.toarray())


@pytest.mark.parametrize("name, N, D, L, empty", [("bibtex", 4880, 1836, 159, 0),
                                                  ("delicious", 12920, 500, 983, 10),
                                                  ("corel5k", 4500, 499, 374, 0)])
def test_real_sets(name, N, D, L, empty):
  d = read_xc(shared_file(name, "train"))
  assert d.X.shape == (N, D) and d.Y.shape == (N, L)
  assert int((np.diff(d.Y.indptr) == 0).sum()) == empty


def test_write_sorts_unsorted_rows(tmp_path):
  # CSR rows with unsorted indices (as TfidfVectorizer returns) are written sorted, as
  # scikit-learn's svmlight reader requires; the caller's matrix is left as it was.
  X = sp.csr_matrix((np.array([2., 1., 3.], np.float32), np.array([4, 1, 0]),
                     np.array([0, 2, 3])), shape=(2, 5))
  Y = sp.csr_matrix((np.ones(2, np.float32), np.array([2, 0]), np.array([0, 2, 2])),
                    shape=(2, 3))
  path = tmp_path / "u.txt"
  write_xc(str(path), X, Y)
  assert path.read_text().splitlines()[1:] == ["0,2 1:1 4:2", " 0:3"]
  assert X.indices.tolist() == [4, 1, 0]


def test_fast_and_line_readers_agree(tmp_path):
  """read_xc's vectorised pass gives the same matrices as the line-by-line reader."""
  from mach_jax.data import xc
  rng = np.random.default_rng(0)
  X = sp.random(300, 50, density=0.1, format="csr", random_state=1, dtype=np.float32)
  X.data = rng.normal(size=X.nnz).astype(np.float32)
  Y = sp.random(300, 20, density=0.1, format="csr", random_state=2, dtype=np.float32)
  Y.data[:] = 1
  path = tmp_path / "r.txt"
  write_xc(path, X, Y)
  lines = path.read_text().splitlines(keepends=True)[1:]
  fast = xc._read_fast(lines, 300, 50, 20)
  slow = xc._read_lines(str(path), lines, 300, 50, 20)
  assert fast is not None
  for a, b in ((fast.X, slow.X), (fast.Y, slow.Y)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)
  # A repeated label counts once in both.
  lines = ["1,1,3 0:1\n"]
  assert xc._read_fast(lines, 1, 5, 4).Y.indices.tolist() == [1, 3]
  assert xc._read_lines("x", lines, 1, 5, 4).Y.indices.tolist() == [1, 3]


def test_grammar_is_checked_in_every_block_of_lines(tmp_path):
  """The vectorised reader checks the features' grammar block by block (bounded memory); a
  bad token in a late block still stops it, and the line reader names the line."""
  from mach_jax.data import xc
  n = 3 * xc._CHECK_LINES + 5
  rows = [f"{i % 4} {i % 7}:1.5 9:2" for i in range(n)]
  _write(tmp_path, f"{n} 10 4\n" + "\n".join(rows) + "\n")
  lines = (tmp_path / "d.txt").read_text().splitlines(keepends=True)[1:]
  assert xc._read_fast(lines, n, 10, 4) is not None
  rows[n - 2] = "1 +3:1.5"  # Only the grammar rejects "+3"; line n (the header is line 1).
  lines[n - 2] = rows[n - 2] + "\n"
  assert xc._read_fast(lines, n, 10, 4) is None
  bad = _write(tmp_path, f"{n} 10 4\n" + "\n".join(rows) + "\n", name="bad.txt")
  with pytest.raises(XCFormatError, match=rf"bad.txt:{n}\b"):
    read_xc(bad)


def _same(a, b):
  assert a.X.shape == b.X.shape and a.Y.shape == b.Y.shape
  for m, n in ((a.X, b.X), (a.Y, b.Y)):
    np.testing.assert_array_equal(m.indptr, n.indptr)
    np.testing.assert_array_equal(m.indices, n.indices)
    np.testing.assert_array_equal(m.data, n.data)
    assert m.dtype == n.dtype and m.indices.dtype == n.indices.dtype


def test_cache_returns_the_parsed_matrices_and_follows_file_changes(tmp_path):
  path, cache = _write(tmp_path, GOOD), tmp_path / "cache"
  first = read_xc(path, cache_dir=str(cache))
  (entry,) = cache.iterdir()
  _same(first, read_xc(path))
  _same(read_xc(path, cache_dir=str(cache)), first)  # Now from the entry.
  assert list(cache.iterdir()) == [entry]
  # A changed file gets a new entry, never the stale one.
  changed = _write(tmp_path, GOOD.replace("0:1.5", "0:7"))
  assert changed == path
  assert read_xc(path, cache_dir=str(cache)).X[0, 0] == 7
  assert len(list(cache.iterdir())) == 2


def test_damaged_cache_entry_is_reported_and_replaced(tmp_path):
  path, cache = _write(tmp_path, GOOD), tmp_path / "cache"
  read_xc(path, cache_dir=str(cache))
  (entry,) = cache.iterdir()
  entry.write_bytes(entry.read_bytes()[:100])
  with pytest.warns(RuntimeWarning, match="unreadable cache entry"):
    again = read_xc(path, cache_dir=str(cache))
  _same(again, read_xc(path))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Rewritten: it reads back without a warning.
    _same(read_xc(path, cache_dir=str(cache)), again)


def test_cache_does_not_hide_format_errors(tmp_path):
  path = _write(tmp_path, "2 6 4\n0 1:1\n0 6:1\n")
  with pytest.raises(XCFormatError, match=r"d.txt:3: feature 6"):
    read_xc(path, cache_dir=str(tmp_path / "cache"))
  assert not (tmp_path / "cache").exists()


def test_config_cache_dir_reaches_the_reader(tmp_path):
  from mach_jax import config as config_lib, data as data_lib
  cfg = config_lib.default_config().data
  cfg.update(name="xc", train=_write(tmp_path, GOOD, "train.txt"),
             test=_write(tmp_path, GOOD, "test.txt"), cache_dir=str(tmp_path / "cache"))
  train, _ = data_lib.load(cfg)
  _same(train, read_xc(cfg.train))
  assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["test", "train"]


def test_written_gz_files_are_byte_identical_across_writes(tmp_path):
  import time

  import scipy.sparse as sp
  X = sp.random(5, 7, density=0.4, format="csr", random_state=0, dtype=np.float32)
  Y = sp.csr_matrix(np.eye(5, 3, dtype=np.float32))
  write_xc(str(tmp_path / "a.txt.gz"), X, Y)
  time.sleep(1.1)  # gzip.open would stamp another second into the header.
  write_xc(str(tmp_path / "a2.txt.gz"), X, Y)
  a, b = (tmp_path / "a.txt.gz").read_bytes(), (tmp_path / "a2.txt.gz").read_bytes()
  assert a[4:8] == b"\0\0\0\0"  # No modification time.
  got = read_xc(str(tmp_path / "a.txt.gz"))
  np.testing.assert_allclose(got.X.toarray(), X.toarray(), rtol=1e-5)  # Written as %.6g.
  assert (got.Y != Y).nnz == 0
  assert a.replace(b"a.txt", b"") == b.replace(b"a2.txt", b"")  # Only the stored name differs.
