import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import decode, losses
from mach_jax.hashing import HashSpec


def test_estimators_on_a_known_case():
  # R=3 repetitions, one point, B=4; class 0 sits in buckets (1, 2, 0).
  probs = jnp.array([[[0.1, 0.6, 0.2, 0.1]],
                     [[0.1, 0.1, 0.5, 0.3]],
                     [[0.4, 0.2, 0.2, 0.2]]])
  buckets = jnp.array([[1, 2, 0]])  # [C=1, R]
  v = {"mean": (0.6 + 0.5 + 0.4) / 3, "min": 0.4, "median": 0.5}
  for name, expected in v.items():
    got = decode.class_scores(probs, buckets, name)
    assert got.shape == (1, 1)
    assert float(got[0, 0]) == pytest.approx(expected, rel=1e-6)
  # Unbiased: B/(B-1) * (mean - 1/B) = 4/3 * (0.5 - 0.25).
  assert float(decode.class_scores(probs, buckets, "unbiased")[0, 0]) == pytest.approx(1 / 3)
  logp = jnp.log(probs)
  got = decode.class_scores(logp, buckets, "log_mean")
  assert float(got[0, 0]) == pytest.approx(np.log([0.6, 0.5, 0.4]).mean(), rel=1e-6)


def test_unbiased_estimator_recovers_true_probability():
  # If the true class distribution is p, bucket probabilities are sums of p over each
  # bucket. Averaged over random hashes the unbiased estimator equals p_k.
  K, B, R = 20, 5, 4000
  p = np.random.default_rng(0).dirichlet(np.ones(K))
  spec = HashSpec("murmur", K=K, B=B, R=R, seed=3)
  table = spec.bucket_table()  # [R, K]
  bucket_p = np.stack([np.bincount(table[r], weights=p, minlength=B) for r in range(R)])
  est = decode.class_scores(jnp.asarray(bucket_p[:, None, :], jnp.float32),
                            jnp.asarray(table.T), "unbiased")[0]
  np.testing.assert_allclose(np.asarray(est), p, atol=0.012)
  naive = decode.class_scores(jnp.asarray(bucket_p[:, None, :], jnp.float32),
                              jnp.asarray(table.T), "mean")[0]
  assert np.abs(np.asarray(naive) - p).mean() > 0.1  # The plain mean is biased by ~1/B.


@pytest.mark.parametrize("estimator", decode.ESTIMATORS)
def test_chunked_topk_equals_brute_force(estimator):
  spec = HashSpec("universal", K=1000, B=16, R=4, seed=0)
  logits = jax.random.normal(jax.random.key(0), (4, 6, 16))
  values = decode.rep_values(estimator, "softmax", logits)
  full = decode.class_scores(values, jnp.asarray(spec.bucket_table().T), estimator)
  for chunk in (128, 384, 1024):  # 1000 is not a multiple of any of these but 1024 > K.
    table = decode.class_major_table(spec, chunk)
    table = jnp.asarray(table.reshape(-1, chunk, spec.R))
    scores, classes = decode.topk_chunked(values, table, estimator=estimator, k=7,
                                          num_classes=spec.K)
    ref_scores, _ = jax.lax.top_k(full, 7)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(ref_scores), rtol=1e-6)
    gathered = np.take_along_axis(np.asarray(full), np.asarray(classes), axis=1)
    np.testing.assert_allclose(gathered, np.asarray(scores), rtol=1e-6)
    assert np.asarray(classes).max() < spec.K


def test_unbiased_and_mean_rank_alike():
  spec = HashSpec("murmur", K=500, B=32, R=8)
  dec = decode.Decoder(spec, "bce", batch_size=4)
  logits = jax.random.normal(jax.random.key(1), (8, 4, 32))
  _, a = dec.topk(logits, 10, "mean")
  _, b = dec.topk(logits, 10, "unbiased")
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_memory_budget_sets_chunk_size():
  spec = HashSpec("murmur", K=100_000, B=64, R=8)
  small = decode.Decoder(spec, "bce", batch_size=64, memory_budget_bytes=1 << 20)
  large = decode.Decoder(spec, "bce", batch_size=64, memory_budget_bytes=16 << 20)
  for dec, budget in ((small, 1 << 20), (large, 16 << 20)):
    assert dec.chunk_size * 64 * (spec.R + 2) * 4 <= budget
    assert dec.num_chunks * dec.chunk_size >= spec.K
  assert small.num_chunks > large.num_chunks


def test_probabilities_follow_the_loss():
  logits = jnp.array([[[0.0, 1.0]]])
  np.testing.assert_allclose(losses.bucket_probabilities("bce", logits), jax.nn.sigmoid(logits))
  np.testing.assert_allclose(losses.bucket_probabilities("softmax_hist", logits).sum(-1), 1.0)
