"""The shared input layer (``config.model.shared_input``): one [D, H] table feeding R heads.

An ablation, off by default: it couples the repetitions, so a 'rep'-sharded step all-reduces
the table's gradient. These tests pin what it computes, that the collective is there and how
large it is, and that everything else (row-sparse Adam, sharding, export, serving) works.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import config as config_lib, data as data_lib, model as model_lib, sharding, train
from mach_jax.predictor import Predictor
from tests.helpers import flat, popular_baseline, run_steps, tiny_config, tiny_setup

R = 8


def test_one_table_feeds_every_repetition():
  D, H, B, b = 50, 16, 8, 5
  model = model_lib.MACH(num_repetitions=3, num_features=D, num_buckets=B, hidden=(H,),
                         shared_input=True, embedding_bag="gather")
  rng = np.random.default_rng(0)
  X = (rng.random((b, D)) < 0.2) * rng.random((b, D))
  rows, cols = np.nonzero(X)
  x = {"indices": jnp.asarray(cols, jnp.int32), "values": jnp.asarray(X[rows, cols]),
       "segments": jnp.asarray(rows, jnp.int32), "mask": jnp.ones(b, bool)}
  params = model.init(jax.random.key(0), x)["params"]
  assert params["shared"]["embedding"].shape == (D, H)
  assert "embedding" not in params["reps"]
  h = np.maximum(X @ params["shared"]["embedding"] + params["shared"]["embedding_bias"], 0)
  out = params["reps"]["output"]
  want = np.einsum("bh,rhk->rbk", h, out["kernel"]) + out["bias"][:, None]
  np.testing.assert_allclose(model.apply({"params": params}, x), want, rtol=1e-5, atol=1e-6)
  dense = model.clone(embedding_bag="dense").apply({"params": params}, x)
  np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-6)


def test_shared_input_refuses_an_input_hash_and_dense_input():
  c = tiny_config()
  c.model.shared_input = True
  c.model.input_dim = 256
  with pytest.raises(ValueError, match=r"shared_input=True .*input_dim=0 \(got False, 256\)"):
    config_lib.build(c, 1000, 400, 10)
  c.model.input_dim = -1  # Derived: off with a shared table.
  assert config_lib.resolve(c, 400, 1.0, num_features=1 << 18).model.input_dim == 0


@pytest.mark.parametrize("row_sparse", [False, True], ids=["adam", "row_sparse"])
def test_rep_sharded_shared_input_matches_one_device(row_sparse):
  single = flat(run_steps((("data", 1), ("rep", 1)), shared_input=True, row_sparse=row_sparse))
  sharded = flat(run_steps((("data", 1), ("rep", 8)), shared_input=True,
                           row_sparse=row_sparse))
  assert single["['shared']['embedding']"].ndim == 2
  for k in single:  # The gradient sum over 'rep' reorders float additions.
    np.testing.assert_allclose(single[k], sharded[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("row_sparse", [False, True], ids=["adam", "row_sparse"])
def test_the_shared_tables_collective_is_counted(row_sparse):
  setup, batches = tiny_setup((("data", 1), ("rep", 8)), R, shared_input=True,
                              row_sparse=row_sparse)
  hlo = setup.train_step.lower(setup.state, setup.put(batches[0])).compile().as_text()
  found, nbytes = sharding.collectives(hlo), sharding.collective_bytes(hlo)
  assert found == {"all-reduce": 1}, found
  # JAX sums over 'rep' where the invariant layer meets the repetitions: the gradient of the
  # shared layer's output h [b, H], not of its [D, H] table (each device then derives the
  # table's and the bias's gradient from the sum itself). One all-reduce of b*H floats.
  b, H = batches[0]["mask"].shape[0], 64
  assert nbytes == {"all-reduce": b * H * 4}, nbytes
  groups = sharding.collectives(setup.logits_fn.lower(
      setup.state.params, setup.put(batches[0])).compile().as_text())
  assert not groups  # Inference is still collective-free: each device reads the table.
  sharding.check_state_sharding(setup.mesh, setup.state, R)  # The table replicated.


def test_trains_exports_and_serves_the_same_predictions(tmp_path):
  c = tiny_config()
  c.model.shared_input = True
  c.optimizer.row_sparse = True
  c.eval.estimator = "mean"
  results = train.train_and_evaluate(c, str(tmp_path))
  D, H, B = 1000, 64, 32
  assert results["num_params"] == D * H + H + 4 * (H * B + B)
  tr, te = data_lib.load(c.data)
  assert results["P@1"] > popular_baseline(tr.Y, te.Y)["P@1"] + 0.1
  _, classes = Predictor.load(os.path.join(tmp_path, "model")).predict_topk(te.X, k=1)
  hits = np.asarray(te.Y[np.arange(te.num_points), classes[:, 0]]).ravel()
  assert hits.mean() == pytest.approx(results["P@1"], abs=1e-6)
