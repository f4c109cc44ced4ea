import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.utils import murmurhash3_32

from mach_jax import hashing
from mach_jax.hashing import FAMILIES, HashSpec

# Reference structures for the tests: a CSR inverted index and bucket-load statistics.


@dataclasses.dataclass(frozen=True)
class InvertedIndex:
  """Classes of each bucket, per repetition, in CSR layout.

  ``classes[r, offsets[r, j]:offsets[r, j + 1]]`` are the classes in bucket j of
  repetition r, in increasing order. Memory is R*K int32 + R*(B+1) int64.
  """

  classes: np.ndarray  # int32 [R, K]
  offsets: np.ndarray  # int64 [R, B + 1]

  def bucket(self, r: int, j: int) -> np.ndarray:
    return self.classes[r, self.offsets[r, j]:self.offsets[r, j + 1]]

  @property
  def nbytes(self) -> int:
    return self.classes.nbytes + self.offsets.nbytes


def build_inverted_index(spec: HashSpec, table: np.ndarray | None = None) -> InvertedIndex:
  """Vectorised build: one stable argsort and one bincount per repetition."""
  table = spec.bucket_table() if table is None else table
  classes = np.argsort(table, axis=1, kind="stable").astype(np.int32)
  counts = np.stack([np.bincount(t, minlength=spec.B) for t in table])
  offsets = np.zeros((spec.R, spec.B + 1), np.int64)
  np.cumsum(counts, axis=1, out=offsets[:, 1:])
  return InvertedIndex(classes=classes, offsets=offsets)


def load_statistics(spec: HashSpec, table: np.ndarray | None = None) -> dict[str, float]:
  """Bucket-load statistics over all repetitions.

  Returns min/max/mean/std of classes per bucket, the max load relative to K/B, the
  fraction of empty buckets, and the fraction of class pairs that share a bucket in a
  repetition (ideal 1/B for a random hash, slightly below for the balanced family).
  """
  table = spec.bucket_table() if table is None else table
  counts = np.stack([np.bincount(t, minlength=spec.B) for t in table]).astype(np.float64)
  pairs = (counts * (counts - 1) / 2).sum(axis=1) / max(spec.K * (spec.K - 1) / 2, 1)
  return {
      "min_load": float(counts.min()),
      "max_load": float(counts.max()),
      "mean_load": float(counts.mean()),
      "std_load": float(counts.std()),
      "max_over_mean": float(counts.max() / (spec.K / spec.B)),
      "empty_bucket_fraction": float((counts == 0).mean()),
      "pair_collision_rate": float(pairs.mean()),
      "ideal_pair_collision_rate": 1.0 / spec.B,
  }


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_and_in_range(family):
  spec = HashSpec(family, K=5003, B=61, R=5, seed=7)
  table = spec.bucket_table()
  assert table.shape == (5, 5003) and table.dtype == np.int32
  assert table.min() >= 0 and table.max() < 61
  again = HashSpec.from_dict(spec.to_dict()).bucket_table()
  np.testing.assert_array_equal(table, again)
  other_seed = HashSpec(family, K=5003, B=61, R=5, seed=8).bucket_table()
  assert (table != other_seed).mean() > 0.5
  # Repetitions are different hash functions.
  assert (table[0] != table[1]).mean() > 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_device_hash_equals_host_hash(family):
  spec = HashSpec(family, K=20011, B=97, R=4, seed=3)
  classes = jnp.arange(spec.K).reshape(-1, 1)
  on_device = jax.jit(lambda k: spec.buckets(k, jnp))(classes)
  assert on_device.shape == (4, spec.K, 1)
  np.testing.assert_array_equal(np.asarray(on_device)[..., 0], spec.bucket_table())


def test_murmur_matches_official_mach_hash():
  spec = HashSpec("murmur", K=3000, B=128, R=3, seed=0)
  expected = np.array([[murmurhash3_32(k, seed=r, positive=True) % 128 for k in range(3000)]
                       for r in range(3)])
  np.testing.assert_array_equal(spec.bucket_table(), expected)


def test_universal_matches_exact_integer_formula():
  spec = HashSpec("universal", K=100_000, B=1000, R=2, seed=11)
  a, b = spec.params()[:, 0].astype(object), spec.params()[:, 1].astype(object)
  ks = [0, 1, 2, 99_999, 65_536, 12_345, 2**16 - 1]
  p = hashing.MERSENNE_P
  table = spec.bucket_table()
  for r in range(2):
    assert 1 <= a[r] < p and 0 <= b[r] < p
    for k in ks:
      assert table[r, k] == ((a[r] * k + b[r]) % p) % 1000


@settings(max_examples=50, deadline=None)
@given(a=st.integers(1, 2**31 - 2), k=st.integers(0, 2**31 - 2))
def test_mulmod_no_overflow(a, k):
  got = hashing.mulmod_mersenne(np.array([a], np.uint32), np.array([k], np.uint32), np)
  assert int(got[0]) == (a * k) % hashing.MERSENNE_P


@pytest.mark.parametrize("family", FAMILIES)
def test_pair_collision_rate_close_to_one_over_B(family):
  B = 50
  spec = HashSpec(family, K=20_000, B=B, R=8, seed=1)
  table = spec.bucket_table()
  rng = np.random.default_rng(0)
  i = rng.integers(0, spec.K, 200_000)
  j = rng.integers(0, spec.K, 200_000)
  keep = i != j
  rate = (table[:, i[keep]] == table[:, j[keep]]).mean()
  # 1.6M pair trials: the standard error is about 1e-4 around 1/B = 0.02.
  assert abs(rate - 1 / B) < 0.1 / B
  stats = load_statistics(spec, table)
  assert abs(stats["pair_collision_rate"] - 1 / B) < 0.1 / B


def test_balanced_loads_are_floor_or_ceil():
  for K, B in [(10_007, 97), (4096, 64), (1000, 999), (5, 2)]:
    spec = HashSpec("balanced", K=K, B=B, R=3, seed=5)
    table = spec.bucket_table()
    for r in range(3):
      counts = np.bincount(table[r], minlength=B)
      assert counts.min() == K // B and counts.max() == -(-K // B)


def test_negative_padding_is_hashed_harmlessly():
  spec = HashSpec("murmur", K=100, B=10, R=2)
  out = spec.buckets(np.array([[3, -1]]))
  assert out.shape == (2, 1, 2) and out.min() >= 0 and out.max() < 10


def test_inverted_index_lists_every_class_once():
  spec = HashSpec("universal", K=3001, B=37, R=3, seed=2)
  table = spec.bucket_table()
  index = build_inverted_index(spec, table)
  for r in range(3):
    seen = np.concatenate([index.bucket(r, j) for j in range(37)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(spec.K))
    for j in (0, 5, 36):
      members = index.bucket(r, j)
      assert (table[r, members] == j).all()
      assert (np.diff(members) > 0).all()
  assert index.nbytes == index.classes.nbytes + index.offsets.nbytes


@pytest.mark.parametrize("kwargs, match", [
    (dict(family="md5", K=10, B=2, R=1), "family"),
    (dict(family="murmur", K=0, B=2, R=1), "K=0"),
    (dict(family="murmur", K=10, B=20, R=1), "more buckets"),
    (dict(family="murmur", K=10, B=2, R=0), "R=0"),
    (dict(family="murmur", K=10, B=2, R=1, seed=-1), "seed"),
])
def test_bad_spec_is_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    HashSpec(**kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_index_matches_csr_index(family):
  spec = HashSpec(family, K=5003, B=61, R=3, seed=4)
  padded = hashing.build_padded_index(spec)
  csr = build_inverted_index(spec)
  assert padded.classes.shape == (3, 61, padded.sizes.max())
  for r in range(3):
    for j in range(61):
      n = padded.sizes[r, j]
      np.testing.assert_array_equal(padded.classes[r, j, :n], csr.bucket(r, j))
      assert (padded.classes[r, j, n:] == -1).all()
  if family == "balanced":
    assert padded.classes.shape[2] == -(-spec.K // spec.B)  # No padding beyond ceil(K/B).


def test_identity_family_maps_each_class_to_itself():
  spec = HashSpec("identity", K=50, B=50, R=1)
  np.testing.assert_array_equal(spec.bucket_table(), np.arange(50)[None])
  np.testing.assert_array_equal(np.asarray(spec.buckets(jnp.arange(50), jnp)), np.arange(50)[None])
  with pytest.raises(ValueError, match="needs R=1 and B=K=50"):
    HashSpec("identity", K=50, B=10, R=1)
