import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, strategies as st

from mach_jax.data import batching
from mach_jax.data.synthetic import make_catalogue


@given(st.integers(0, 10**6))
def test_round_up_width_covers_and_bounds_padding(n):
  w = batching.round_up_width(n)
  assert w >= max(n, 8)
  assert w <= max(1.125 * n, 8) + 1e-9 or n <= 8


def _data():
  X = sp.csr_matrix(np.array([[1, 0, 2, 0], [0, 0, 0, 0], [3, 4, 5, 6]], np.float32))
  Y = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]], np.float32))
  return X, Y


def test_batch_contents_and_padding():
  X, Y = _data()
  b = batching.make_batch(X, Y, np.array([0, 1, 2]), batch_size=4,
                          widths=batching.Widths(nnz=8, labels=2))
  assert b["indices"].shape == (8,) and b["labels"].shape == (4, 2)
  np.testing.assert_array_equal(b["mask"], [1, 1, 1, 0])
  np.testing.assert_array_equal(b["labels"], [[0, 1], [-1, -1], [2, -1], [-1, -1]])
  dense = np.zeros((4, 4), np.float32)
  np.add.at(dense, (b["segments"], b["indices"]), b["values"])
  np.testing.assert_array_equal(dense[:3], X.toarray())
  assert (b["values"][6:] == 0).all()  # Padding adds nothing.
  d = batching.make_batch(X, Y, np.array([0, 1, 2]), batch_size=4, dense=True)
  np.testing.assert_array_equal(d["dense"], dense)


def test_pack_features_is_make_batch_without_labels():
  X, Y = _data()
  b = batching.make_batch(X, Y, np.arange(3), batch_size=4, widths=batching.Widths(nnz=8))
  p = batching.pack_features(X, batch_size=4, nnz=8)
  assert set(p) == {"indices", "values", "segments", "mask"}
  for key in p:
    np.testing.assert_array_equal(p[key], b[key])
  d = batching.pack_features(X, batch_size=4, nnz=8, dense=True)
  np.testing.assert_array_equal(d["dense"], batching.make_batch(X, Y, np.arange(3), 4,
                                                                dense=True)["dense"])
  with pytest.raises(ValueError, match="6 nonzeros do not fit in a batch of width 4"):
    batching.pack_features(X, batch_size=4, nnz=4)
  with pytest.raises(ValueError, match="3 rows do not fit in batch_size=2"):
    batching.pack_features(X, batch_size=2, nnz=8)


def test_never_truncates_a_batch_wider_than_the_widths():
  X, Y = _data()
  b = batching.make_batch(X, Y, np.array([2, 0]), batch_size=2,
                          widths=batching.Widths(nnz=2, labels=1))
  assert b["indices"].shape[0] >= 6 and int((b["values"] != 0).sum()) == 6
  assert b["labels"].shape[1] >= 2


def test_epoch_uses_few_shapes_and_every_point_once():
  train, _ = make_catalogue(num_train=3000, num_test=10, num_classes=300, num_features=500)
  shapes, seen, padded = set(), [], []
  for rows in batching.batch_rows(3000, 128, shuffle=True, seed=0, epoch=1):
    seen.append(rows)
  widths = batching.Widths.for_data(train.X, train.Y, 128)
  for b in batching.iterate_batches(train.X, train.Y, 128, shuffle=True, seed=0, epoch=1,
                                    widths=widths):
    shapes.add((b["indices"].shape, b["labels"].shape))
    if b["mask"].all():  # The last, partial batch keeps the floor.
      padded.append(1 - (b["values"] != 0).mean())
  assert len(shapes) <= 3
  assert max(padded) < 0.125 and widths.nnz == min(s[0][0] for s in shapes)
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(3000))
  again = batching.batch_rows(3000, 128, shuffle=True, seed=0, epoch=1)
  assert all((a == b).all() for a, b in zip(seen, again))


def test_prefetch_preserves_order_and_raises_errors():
  assert list(batching.prefetch(iter(range(10)))) == list(range(10))

  def bad():
    yield 1
    raise RuntimeError("boom")

  it = batching.prefetch(bad())
  assert next(it) == 1
  try:
    next(it)
    raise AssertionError("no error")
  except RuntimeError as e:
    assert "boom" in str(e)


def test_synthetic_is_deterministic_and_power_law():
  a, _ = make_catalogue(num_train=2000, num_test=100, num_classes=1000, num_features=2000)
  b, _ = make_catalogue(num_train=2000, num_test=100, num_classes=1000, num_features=2000)
  assert (a.X != b.X).nnz == 0 and (a.Y != b.Y).nnz == 0
  freq = np.sort(np.asarray(a.Y.sum(axis=0)).ravel())[::-1]
  assert freq[0] > 20 * np.median(freq[freq > 0])  # A head and a long tail.
  assert np.diff(a.Y.indptr).min() >= 1


def test_sharded_batch_blocks_are_self_contained():
  X, Y = _data()
  b = batching.make_batch(X, Y, np.array([0, 1, 2]), batch_size=4, num_shards=2,
                          widths=batching.Widths(nnz=8, labels=2))
  T = b["indices"].size // 2
  for s in range(2):
    blk = slice(s * T, (s + 1) * T)
    dense = np.zeros((2, 4), np.float32)
    np.add.at(dense, (b["segments"][blk], b["indices"][blk]), b["values"][blk])
    want = np.zeros((2, 4), np.float32)
    rows = [r for r in (2 * s, 2 * s + 1) if r < 3]
    want[:len(rows)] = X.toarray()[rows]
    np.testing.assert_array_equal(dense, want)
  np.testing.assert_array_equal(b["mask"], [1, 1, 1, 0])
