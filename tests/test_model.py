import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import model as model_lib
from mach_jax.data import batching
from mach_jax.data.synthetic import make_catalogue

R, D, H, B = 4, 300, 32, 16


@pytest.fixture(scope="module")
def batch():
  train, _ = make_catalogue(num_train=64, num_test=1, num_classes=50, num_features=D)
  return batching.make_batch(train.X, train.Y, np.arange(64), 64)


def _init(m, x):
  return m.init(jax.random.key(0), x)["params"]


@pytest.mark.parametrize("hidden", [(H,), (H, 24), (H, 24, 20)])
def test_param_count_formula(batch, hidden):
  m = model_lib.MACH(num_repetitions=R, num_features=D, num_buckets=B, hidden=hidden)
  params = _init(m, batch)
  n = model_lib.count_params(params)
  widths = [D, *hidden, B]
  assert n == R * sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
  if len(hidden) == 1:
    assert n == R * (D * H + H * B + H + B)
  assert model_lib.param_bytes(params) == 4 * n
  # Every leaf carries the repetition axis first.
  assert all(x.shape[0] == R for x in jax.tree.leaves(params))


def test_full_softmax_formula():
  K = 1_000_000
  assert model_lib.num_params_full_softmax(D, (H,), K) == D * H + H + H * K + K
  assert model_lib.num_params_full_softmax(D, (H, 8), K) == D * H + H + H * 8 + 8 + 8 * K + K


def test_vmapped_model_equals_repetitions_one_by_one(batch):
  m = model_lib.MACH(num_repetitions=R, num_features=D, num_buckets=B, hidden=(H, 24))
  params = _init(m, batch)
  logits = m.apply({"params": params}, batch)
  assert logits.shape == (R, 64, B)
  single = model_lib.Repetition(num_features=D, num_buckets=B, hidden=(H, 24))
  for r in range(R):
    p_r = jax.tree.map(lambda x: x[r], params["reps"])
    np.testing.assert_allclose(single.apply({"params": p_r}, batch), logits[r],
                               rtol=1e-5, atol=1e-6)
  # Repetitions are initialised independently.
  emb = params["reps"]["embedding"]
  assert not np.allclose(emb[0], emb[1])


def test_dense_and_gather_embedding_bags_agree(batch):
  outs = []
  for mode in ("dense", "gather"):
    m = model_lib.MACH(num_repetitions=R, num_features=D, num_buckets=B, hidden=(H,),
                       embedding_bag=mode)
    params = _init(m, batch)
    outs.append(m.apply({"params": params}, batch))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_dense_input_variant_matches_sparse(batch):
  sparse = model_lib.MACH(num_repetitions=R, num_features=D, num_buckets=B, hidden=(H,))
  dense = model_lib.MACH(num_repetitions=R, num_features=D, num_buckets=B, hidden=(H,),
                         sparse_input=False)
  X = np.zeros((64, D), np.float32)
  np.add.at(X, (batch["segments"], batch["indices"]), batch["values"])
  pd = _init(dense, jnp.asarray(X))
  assert model_lib.count_params(pd) == R * (D * H + H + H * B + B)
  # Same weights, laid out by each variant: the logits agree.
  ps = {"reps": {"embedding": pd["reps"]["input_dense"]["kernel"],
                 "embedding_bias": pd["reps"]["input_dense"]["bias"],
                 "output": pd["reps"]["output"]}}
  np.testing.assert_allclose(sparse.apply({"params": ps}, batch),
                             dense.apply({"params": pd}, jnp.asarray(X)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["gather", "dense"])
@pytest.mark.parametrize("rows", [1, 64])
def test_feature_major_table_serves_the_same_logits(batch, mode, rows):
  m = model_lib.MACH(num_repetitions=R, num_features=D, num_buckets=B, hidden=(H, 24),
                     embedding_bag=mode)
  params = _init(m, batch)
  # Distinct biases, so a repetition reading another's bias would show.
  params["reps"]["embedding_bias"] = jax.random.normal(jax.random.key(1), (R, H))
  x = batch if rows == 64 else {**batch, "mask": batch["mask"][:1],
                                "segments": jnp.zeros_like(batch["segments"])}
  served = model_lib.to_feature_major(params)
  assert served["reps"]["embedding"].shape == (D, R * H)
  np.testing.assert_array_equal(served["reps"]["embedding"][7, H:2 * H],
                                params["reps"]["embedding"][1, 7])
  np.testing.assert_allclose(model_lib.feature_major_logits(m, served, x),
                             m.apply({"params": params}, x), rtol=1e-4, atol=1e-5)


def test_feature_major_logits_refuse_hashed_or_shared_inputs(batch):
  m = model_lib.MACH(num_repetitions=R, num_features=D, num_buckets=B, hidden=(H,))
  served = model_lib.to_feature_major(_init(m, batch))
  hashed = {**batch, "indices": jnp.tile(batch["indices"], (R, 1)),
            "values": jnp.tile(batch["values"], (R, 1))}
  with pytest.raises(ValueError, match="model.apply"):
    model_lib.feature_major_logits(m, served, hashed)
  with pytest.raises(ValueError, match="model.apply"):
    model_lib.feature_major_logits(m.clone(shared_input=True), served, batch)
