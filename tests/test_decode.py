import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import decode, losses
from mach_jax.hashing import HashSpec


def class_scores(values: jax.Array, class_buckets: jax.Array, estimator: str) -> jax.Array:
  """Scores of the classes whose buckets are given.

  Args:
    values: [R, b, B] per-repetition values (see ``rep_values``).
    class_buckets: int32 [C, R], the bucket of each class in each repetition.
    estimator: one of ``ESTIMATORS``.

  Returns:
    [b, C] class scores.
  """
  return decode._scores_from_rows(jnp.swapaxes(values, 1, 2), class_buckets, estimator).T


def test_estimators_on_a_known_case():
  # R=3 repetitions, one point, B=4; class 0 sits in buckets (1, 2, 0).
  probs = jnp.array([[[0.1, 0.6, 0.2, 0.1]],
                     [[0.1, 0.1, 0.5, 0.3]],
                     [[0.4, 0.2, 0.2, 0.2]]])
  buckets = jnp.array([[1, 2, 0]])  # [C=1, R]
  v = {"mean": (0.6 + 0.5 + 0.4) / 3, "min": 0.4, "median": 0.5}
  for name, expected in v.items():
    got = class_scores(probs, buckets, name)
    assert got.shape == (1, 1)
    assert float(got[0, 0]) == pytest.approx(expected, rel=1e-6)
  # Unbiased: B/(B-1) * (mean - 1/B) = 4/3 * (0.5 - 0.25).
  assert float(class_scores(probs, buckets, "unbiased")[0, 0]) == pytest.approx(1 / 3)
  logp = jnp.log(probs)
  got = class_scores(logp, buckets, "log_mean")
  assert float(got[0, 0]) == pytest.approx(np.log([0.6, 0.5, 0.4]).mean(), rel=1e-6)


def test_unbiased_estimator_recovers_true_probability():
  # If the true class distribution is p, bucket probabilities are sums of p over each
  # bucket. Averaged over random hashes the unbiased estimator equals p_k.
  K, B, R = 20, 5, 4000
  p = np.random.default_rng(0).dirichlet(np.ones(K))
  spec = HashSpec("murmur", K=K, B=B, R=R, seed=3)
  table = spec.bucket_table()  # [R, K]
  bucket_p = np.stack([np.bincount(table[r], weights=p, minlength=B) for r in range(R)])
  est = class_scores(jnp.asarray(bucket_p[:, None, :], jnp.float32),
                            jnp.asarray(table.T), "unbiased")[0]
  np.testing.assert_allclose(np.asarray(est), p, atol=0.012)
  naive = class_scores(jnp.asarray(bucket_p[:, None, :], jnp.float32),
                              jnp.asarray(table.T), "mean")[0]
  assert np.abs(np.asarray(naive) - p).mean() > 0.1  # The plain mean is biased by ~1/B.


@pytest.mark.parametrize("estimator", decode.ESTIMATORS)
def test_chunked_topk_equals_brute_force(estimator):
  spec = HashSpec("universal", K=1000, B=16, R=4, seed=0)
  logits = jax.random.normal(jax.random.key(0), (4, 6, 16))
  values = decode.rep_values(estimator, "softmax", logits)
  full = class_scores(values, jnp.asarray(spec.bucket_table().T), estimator)
  for chunk, hashed in ((128, False), (384, True), (1024, False)):  # K=1000: ragged chunks.
    table = None
    if not hashed:  # Otherwise each chunk's classes are hashed on device.
      table = jnp.asarray(decode.class_major_table(spec, chunk).reshape(-1, chunk, spec.R))
    scores, classes = decode.topk_chunked(values, table, estimator=estimator, k=7, spec=spec,
                                          chunk_size=chunk)
    ref_scores, _ = jax.lax.top_k(full, 7)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(ref_scores), rtol=1e-6)
    gathered = np.take_along_axis(np.asarray(full), np.asarray(classes), axis=1)
    np.testing.assert_allclose(gathered, np.asarray(scores), rtol=1e-6)
    assert np.asarray(classes).max() < spec.K


@pytest.mark.parametrize("rows", [40, 512])  # Every row in the passes; rows pooled in groups.
@pytest.mark.parametrize("k", [1, 2, 5, decode.PASSES_UP_TO_K, decode.PASSES_UP_TO_K + 2])
def test_top_k_of_columns_is_lax_top_k_of_the_rows_ties_and_padding_included(k, rows):
  # Coarse values make many ties (broken by the lower row, as TopK does), within a group of
  # rows and across groups; -inf rows are the padding past K; one column holds fewer
  # finite entries than k, spread over groups; in one every entry is equal.
  rng = np.random.default_rng(k)
  s = np.round(rng.normal(size=(rows, decode.PASSES_FROM_COLUMNS + 4)), 1).astype(np.float32)
  s[rng.random(s.shape) < 0.2] = -np.inf
  s[:, 3] = -np.inf
  s[[5, 17, 30], 3] = [0.5, 0.5, -1.0]
  s[:, 4] = 0.0
  s[-20:, 5] = s[:, 5].max()  # Ties at the top, in the last groups.
  s += 0.0  # -0.0 to 0.0: the passes tie them; TopK orders the bits (+0.0 first).
  values, found = jax.jit(decode.top_k_of_columns, static_argnums=1)(jnp.asarray(s), k)
  want_values, want_rows = jax.lax.top_k(jnp.asarray(s.T), k)
  np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))
  np.testing.assert_array_equal(np.asarray(found), np.asarray(want_rows))
  few = decode.top_k_of_columns(jnp.asarray(s[:, :3]), k)  # A few queries: TopK itself.
  np.testing.assert_array_equal(np.asarray(few[1]), np.asarray(want_rows)[:3])


@pytest.mark.parametrize("estimator", decode.ESTIMATORS)
def test_class_scores_of_a_batch_and_of_single_rows_equal_numpy(estimator):
  """Scores of a batch, and of each of its rows alone, equal numpy's."""
  spec = HashSpec("murmur", K=300, B=16, R=5)
  values = decode.rep_values(estimator, "softmax",
                             jax.random.normal(jax.random.key(2), (5, 6, 16)))
  buckets = spec.bucket_table().T  # [K, R]
  gathered = np.stack([np.asarray(values)[r][:, buckets[:, r]] for r in range(5)])  # [R, b, K]
  expected = {"mean": gathered.mean(0), "log_mean": gathered.mean(0),
              "unbiased": 16 / 15 * (gathered.mean(0) - 1 / 16), "logit_sum": gathered.sum(0),
              "min": gathered.min(0), "median": np.median(gathered, 0)}[estimator]
  batch = class_scores(values, jnp.asarray(buckets), estimator)
  np.testing.assert_allclose(batch, expected, rtol=1e-5, atol=1e-6)
  for i in range(6):
    row = class_scores(values[:, i:i + 1], jnp.asarray(buckets), estimator)
    np.testing.assert_allclose(row[0], expected[i], rtol=1e-5, atol=1e-6)


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


def _planted(spec, b=16, seed=0, true_per_query=3, signal=4.0):
  """Logits of a model that has learned a few true classes per query (plus noise)."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(spec.R, b, spec.B)).astype(np.float32)
  table = spec.bucket_table()
  for i in range(b):
    for c in rng.choice(spec.K, true_per_query, replace=False):
      logits[np.arange(spec.R), i, table[:, c]] += signal
  return jnp.asarray(logits)


@pytest.mark.parametrize("estimator", decode.ESTIMATORS)
def test_candidates_with_all_buckets_equal_exact(estimator):
  spec = HashSpec("murmur", K=3000, B=32, R=4)
  logits = _planted(spec)
  exact = decode.Decoder(spec, "bce", 16)
  every = decode.Decoder(spec, "bce", 16, method="candidates", m=spec.B)
  se, ce = exact.topk(logits, 5, estimator)
  sc, cc = every.topk(logits, 5, estimator)
  np.testing.assert_allclose(np.asarray(sc), np.asarray(se), rtol=1e-6)
  # Classes agree wherever scores are not tied (min and median tie often).
  full = np.asarray(class_scores(decode.rep_values(estimator, "bce", logits),
                                        jnp.asarray(spec.bucket_table().T), estimator))
  got = np.take_along_axis(full, np.asarray(cc), axis=1)
  np.testing.assert_allclose(got, np.asarray(se), rtol=1e-6)
  assert all(len(set(row)) == 5 for row in np.asarray(cc))  # Distinct classes.


def test_candidate_recall_grows_with_m():
  spec = HashSpec("murmur", K=20_000, B=256, R=8)
  logits = _planted(spec, b=32, signal=2.0)
  _, exact = decode.Decoder(spec, "softmax_hist", 32).topk(logits, 5, "mean")
  recalls = []
  for m in (1, 2, 8, 64):
    _, cand = decode.Decoder(spec, "softmax_hist", 32, method="candidates", m=m).topk(
        logits, 5, "mean")
    recalls.append(np.mean([len(set(a) & set(b)) / 5
                            for a, b in zip(np.asarray(exact), np.asarray(cand))]))
  assert recalls == sorted(recalls) and recalls[-1] > recalls[0]
  assert recalls[-1] >= 0.99


def test_min_count_filter_keeps_only_classes_seen_in_enough_repetitions():
  spec = HashSpec("universal", K=2000, B=32, R=4, seed=1)
  logits = _planted(spec, b=4, true_per_query=1, signal=6.0)
  dec = decode.Decoder(spec, "bce", 4, method="candidates", m=1, min_count=4)
  scores, classes = dec.topk(logits, 3, "mean")
  table = spec.bucket_table()
  top1 = np.asarray(jnp.argmax(logits, axis=-1))  # [R, b]
  for i in range(4):
    for s, c in zip(np.asarray(scores[i]), np.asarray(classes[i])):
      if np.isfinite(s):  # A kept class sits in the top bucket of all 4 repetitions.
        assert (table[:, c] == top1[:, i]).all()
  assert np.isfinite(np.asarray(scores[:, 0])).all()  # The planted class survives.


def test_decoder_arguments_are_checked():
  spec = HashSpec("murmur", K=100, B=8, R=2)
  with pytest.raises(ValueError, match="decode method"):
    decode.Decoder(spec, "bce", 4, method="beam")
  with pytest.raises(ValueError, match="m=9"):
    decode.Decoder(spec, "bce", 4, method="candidates", m=9)
  with pytest.raises(ValueError, match="min_count=3"):
    decode.Decoder(spec, "bce", 4, method="candidates", min_count=3)


def test_exact_decoder_hashes_on_device_when_the_table_is_over_budget():
  spec = HashSpec("balanced", K=5000, B=64, R=4, seed=2)
  logits = _planted(spec, b=8)
  with_table = decode.Decoder(spec, "bce", 8)
  hashed = decode.Decoder(spec, "bce", 8, table_budget_bytes=0)
  assert with_table.table is not None and hashed.table is None and hashed.nbytes == 0
  for est in ("mean", "log_mean"):
    a, b = with_table.topk(logits, 5, est), hashed.topk(logits, 5, est)
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_too_few_candidates_for_k_is_an_error():
  spec = HashSpec("balanced", K=16, B=8, R=1)
  dec = decode.Decoder(spec, "bce", 2, method="candidates", m=1)  # 1 bucket of 2 classes.
  with pytest.raises(ValueError, match="2 candidates, fewer than k=5"):
    dec.topk(jnp.zeros((1, 2, 8)), 5)


def test_slots_without_a_distinct_candidate_hold_class_minus_one():
  """Both repetitions' top buckets hold class 0 and one other: 2 or 3 distinct classes for
  4 slots. The slots past them hold class -1 at -inf, never a class twice (a duplicate
  filled them before, and a search listed its product twice)."""
  spec = HashSpec("balanced", K=16, B=8, R=2)
  dec = decode.Decoder(spec, "bce", 2, method="candidates", m=1)  # 1 bucket of 2 classes.
  assert dec.max_k == 4 and decode.Decoder(spec, "bce", 2).max_k == 16
  logits = np.zeros((2, 2, 8), np.float32)
  for r, bucket in enumerate(spec.bucket_table()[:, 0]):
    logits[r, :, bucket] = 5.0
  scores, classes = map(np.asarray, dec.topk(jnp.asarray(logits), 4, "mean"))
  for s, c in zip(scores, classes):
    found = c[c >= 0]
    assert found[0] == 0 and len(set(found)) == len(found) and 2 <= len(found) <= 3
    assert (c[len(found):] == -1).all() and np.isneginf(s[len(found):]).all()
    assert np.isfinite(s[:len(found)]).all()
