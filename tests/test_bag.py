import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import bag


@pytest.mark.parametrize("T", [7, 64, 100, 129])  # Within one chunk, whole chunks, a rest.
def test_embedding_bag_in_chunks_is_the_one_shot_sum(T):
  rng = np.random.default_rng(T)
  table = jnp.asarray(rng.standard_normal((50, 8)), jnp.float32)
  idx = jnp.asarray(rng.integers(0, 50, T), jnp.int32)
  val = jnp.asarray(rng.standard_normal(T), jnp.float32).at[-3:].set(0.0)  # Padding.
  seg = jnp.asarray(np.sort(rng.integers(0, 5, T)), jnp.int32).at[-3:].set(0)
  expect = np.zeros((5, 8), np.float32)
  np.add.at(expect, np.asarray(seg), np.asarray(table)[np.asarray(idx)] * np.asarray(val)[:, None])
  w = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
  grad = lambda chunk: jax.grad(lambda t: (bag.embedding_bag(
      t, idx, val, seg, 5, chunk=chunk) * w).sum())(table)
  for chunk in (0, 16, 32):
    np.testing.assert_allclose(bag.embedding_bag(table, idx, val, seg, 5, chunk=chunk),
                               expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad(chunk), grad(0), rtol=1e-5, atol=1e-6)
    # The gradient written out, from the output's gradient alone (no table): autodiff's.
    np.testing.assert_allclose(bag.embedding_bag_grad(w, idx, val, seg, 50, chunk=chunk),
                               grad(0), rtol=1e-5, atol=1e-6)
  hlo = jax.jit(lambda t: bag.embedding_bag(t, idx, val, seg, 5, chunk=16)).lower(
      table).as_text()
  assert ("while" in hlo) == (T > 16)  # The chunks are a loop, not T gathered rows at once.


def test_embedding_bag_chunks_only_on_cpu():
  assert bag.bag_chunk("cpu") == bag.BAG_CHUNK_CPU > 0
  assert bag.bag_chunk("gpu") == 0


def test_embedding_bag_mode_is_validated():
  with pytest.raises(ValueError, match="embedding_bag"):
    bag.use_dense_bag("fast", 1, 1, 1)


def test_auto_bag_rules_per_platform():
  use = bag.use_dense_bag
  # The H200 shape of the GPU rule's measurement: b = 2,048 over D' = 73,729 gathered rows.
  assert use("auto", 2048, 73_729, 73_728, platform="gpu")
  assert not use("auto", 2048, 73_729, 73_728, platform="cpu")  # b * D > 48 T.
  assert use("auto", 64, 750, 1_000, platform="cpu")  # b * D <= 48 T.
  assert not use("auto", 64, 751, 1_000, platform="cpu")
  assert not use("auto", 2048, 2**20, 73_728, platform="gpu")  # Over 2^30 dense entries.
  assert not use("auto", 1, 100, 1_000, platform="gpu")  # One query: always gathered.
  assert bag.gathered_rows_bag("auto", "cpu") == "gather"
  assert bag.gathered_rows_bag("auto", "gpu") == "auto"
  assert bag.gathered_rows_bag("dense", "cpu") == "dense"


def test_bag_bench_times_every_way(tmp_path):
  import json
  import subprocess
  import sys
  subprocess.run([sys.executable, "-m", "experiments.bench.bag", "--D", "64", "--H", "8",
                  "--b", "4", "--nnz", "40", "--R", "2", "--chunks", "0,16", "--backward",
                  "--rounds", "1", "--repeat", "1", "--out", str(tmp_path)], check=True)
  out = json.load(open(tmp_path / "bag.json"))
  assert set(out["ms"]) == {"one gather", "chunk 16", "dense"} and out["T"] == 160
  assert out["cpu"] and out["versions"]["jax"] != "missing"
  assert all(len(v) == 1 and v[0] > 0 for v in out["ms"].values())
