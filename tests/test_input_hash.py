"""Per-repetition input hashing (``config.model.input_dim``): the hash, the model it feeds,
training on the 'rep' mesh, and serving from the model folder."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax import data as data_lib, model as model_lib, steps, train
from mach_jax.data import batching
from mach_jax.data.synthetic import make_catalogue
from mach_jax.hashing import HashSpec
from mach_jax.predictor import Predictor
from tests.helpers import popular_baseline, tiny_config

SPEC = HashSpec("murmur", K=100, B=16, R=4, input_dim=64)


def test_input_hash_is_the_same_on_host_and_device_and_spreads_features():
  j = np.arange(20_000)
  ids, values = SPEC.input_features(j, np.ones(j.size, np.float32))
  ids_d, values_d = SPEC.input_features(jnp.asarray(j), jnp.ones(j.size), jnp)
  np.testing.assert_array_equal(ids, np.asarray(ids_d))
  np.testing.assert_array_equal(values, np.asarray(values_d))
  assert ids.shape == (4, j.size) and ids.min() >= 0 and ids.max() < 64
  loads = np.stack([np.bincount(row, minlength=64) for row in ids])
  assert loads.max() < 1.25 * j.size / 64 and loads.min() > 0.75 * j.size / 64
  assert set(np.unique(values)) == {-1.0, 1.0}
  assert abs((values == 1).mean() - 0.5) < 0.02
  # Each repetition has its own hash: two repetitions agree on about 1/64 of the features.
  assert (ids[0] == ids[1]).mean() < 0.03
  unsigned = HashSpec("murmur", K=100, B=16, R=4, input_dim=64, input_sign=False)
  u_ids, u_values = unsigned.input_features(j, np.full(j.size, 0.5, np.float32))
  np.testing.assert_array_equal(u_ids, ids)
  assert (u_values == 0.5).all()


def test_padding_stays_zero_and_a_spec_without_the_input_hash_reads_as_off():
  _, values = SPEC.input_features(np.array([3, 0, 0]), np.array([2.0, 0.0, 0.0]))
  assert (values[:, 1:] == 0).all() and (np.abs(values[:, 0]) == 2.0).all()
  old = {k: v for k, v in SPEC.to_dict().items() if not k.startswith("input_")}
  assert HashSpec.from_dict(old).input_dim == 0
  assert HashSpec.from_dict(SPEC.to_dict()) == SPEC
  with pytest.raises(ValueError, match="input_dim=-1"):
    HashSpec("murmur", K=100, B=16, R=4, input_dim=-1)
  with pytest.raises(ValueError, match="no input hash"):
    HashSpec("murmur", K=100, B=16, R=4).input_features(np.arange(3), np.ones(3))


@pytest.mark.parametrize("embedding_bag", ["dense", "gather"])
def test_each_repetition_reads_its_own_hashed_features(embedding_bag):
  D, H, b = 300, 32, 48
  tr, _ = make_catalogue(num_train=b, num_test=1, num_classes=50, num_features=D)
  batch = batching.make_batch(tr.X, tr.Y, np.arange(b), b)
  m = model_lib.MACH(num_repetitions=SPEC.R, num_features=SPEC.input_dim,
                     num_buckets=SPEC.B, hidden=(H,), embedding_bag=embedding_bag)
  x = steps.model_input(jax.tree.map(jnp.asarray, batch), True, SPEC)
  params = m.init(jax.random.key(0), x)["params"]
  assert params["reps"]["embedding"].shape == (SPEC.R, SPEC.input_dim, H)
  logits = np.asarray(m.apply({"params": params}, x))
  ids, signs = SPEC.input_features(np.arange(D), np.ones(D, np.float32))
  p = jax.tree.map(np.asarray, params["reps"])
  for r in range(SPEC.R):
    # The hash as a [D, D'] matrix: X P_r is what repetition r sees.
    P_r = sp.csr_matrix((signs[r], (np.arange(D), ids[r])), shape=(D, SPEC.input_dim))
    h = np.maximum((tr.X @ P_r).toarray() @ p["embedding"][r] + p["embedding_bias"][r], 0)
    want = h @ p["output"]["kernel"][r] + p["output"]["bias"][r]
    np.testing.assert_allclose(logits[r], want, rtol=1e-4, atol=1e-5)


def test_hashed_logits_read_the_stacked_tables_as_model_apply():
  """The Predictor's path (one bag over the [R * D', H] stack) gives model.apply's logits."""
  D, H, b = 300, 32, 48
  tr, _ = make_catalogue(num_train=b, num_test=1, num_classes=50, num_features=D)
  batch = batching.make_batch(tr.X, tr.Y, np.arange(b), b)
  m = model_lib.MACH(num_repetitions=SPEC.R, num_features=SPEC.input_dim,
                     num_buckets=SPEC.B, hidden=(H, 24), embedding_bag="gather")
  x = steps.model_input(jax.tree.map(jnp.asarray, batch), True, SPEC)
  params = m.init(jax.random.key(0), x)["params"]
  params["reps"]["embedding_bias"] = jax.random.normal(jax.random.key(1), (SPEC.R, H))
  np.testing.assert_allclose(model_lib.hashed_logits(m, params, x),
                             m.apply({"params": params}, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="input-hashed"):
    model_lib.hashed_logits(m, params, jax.tree.map(jnp.asarray, batch))


def test_per_repetition_indices_must_match_R():
  m = model_lib.MACH(num_repetitions=2, num_features=8, num_buckets=4, hidden=(4,))
  x = {"indices": jnp.zeros((3, 5), jnp.int32), "values": jnp.ones((3, 5)),
       "segments": jnp.zeros(5, jnp.int32), "mask": jnp.ones(1)}
  with pytest.raises(ValueError, match="leading axis of R=2"):
    m.init(jax.random.key(0), x)


def test_dense_input_with_an_input_hash_is_refused():
  c = tiny_config()
  c.model.update(input_dim=64, dense_input=True)
  tr, _ = data_lib.load(c.data)
  from mach_jax import state as state_lib
  with pytest.raises(ValueError, match="input_dim=64 hashes sparse features"):
    state_lib.create_train_state(c, tr, total_steps=1)


def test_trains_and_serves_the_same_predictions(tmp_path):
  c = tiny_config()
  c.model.input_dim = 256  # D = 1,000 features into 256 rows per repetition.
  c.optimizer.row_sparse = True
  c.eval.estimator = "mean"
  results = train.train_and_evaluate(c, str(tmp_path))
  assert results["hash_spec"]["input_dim"] == 256
  assert results["num_params"] == 4 * (256 * 64 + 64 + 64 * 32 + 32)
  tr, te = data_lib.load(c.data)
  assert results["P@1"] > popular_baseline(tr.Y, te.Y)["P@1"] + 0.1
  _, classes = Predictor.load(os.path.join(tmp_path, "model")).predict_topk(te.X, k=1)
  hits = np.asarray(te.Y[np.arange(te.num_points), classes[:, 0]]).ravel()
  assert hits.mean() == pytest.approx(results["P@1"], abs=1e-6)
