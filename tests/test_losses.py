import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import losses


def mach_loss(name: str, logits: jax.Array, buckets: jax.Array, label_mask: jax.Array,
              row_mask: jax.Array) -> jax.Array:
  """Per-repetition mean loss [R] of the named kind (see mach_jax.losses)."""
  sums, count = losses.mach_loss_sums(name, logits, buckets, label_mask, row_mask)
  return sums / jnp.maximum(count, 1.0)


def _case():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 4))  # R=2, b=3, B=4
  buckets = jnp.array([[[1, 1, 0], [2, 0, 0], [3, 0, 0]],
                       [[0, 2, 0], [1, 0, 0], [3, 0, 0]]])  # [R, b, L=3]
  label_mask = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)  # row 2 has no labels
  row_mask = jnp.array([1.0, 1.0, 1.0])
  return logits, buckets, label_mask, row_mask


def test_bce_on_multi_hot_buckets():
  logits, buckets, lm, rm = _case()
  got = mach_loss("bce", logits, buckets, lm, rm)
  assert got.shape == (2,)
  targets = np.zeros((2, 3, 4))
  targets[0, 0, 1] = 1  # two labels in the same bucket: still 1 (multi-hot)
  targets[0, 1, 2] = 1
  targets[1, 0, [0, 2]] = 1
  targets[1, 1, 1] = 1
  x = np.asarray(logits)
  ref = (np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))).sum(-1).mean(-1)
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_softmax_on_normalised_histogram_skips_unlabelled_rows():
  logits, buckets, lm, rm = _case()
  got = mach_loss("softmax_hist", logits, buckets, lm, rm)
  logp = np.asarray(jax.nn.log_softmax(logits))
  # rep 0: row 0 histogram is all mass on bucket 1; row 1 on bucket 2; row 2 skipped.
  ref0 = -(logp[0, 0, 1] + logp[0, 1, 2]) / 2
  ref1 = -(0.5 * logp[1, 0, 0] + 0.5 * logp[1, 0, 2] + logp[1, 1, 1]) / 2
  np.testing.assert_allclose(got, [ref0, ref1], rtol=1e-5)


def test_multiclass_softmax_and_row_mask():
  logits, buckets, lm, _ = _case()
  rm = jnp.array([1.0, 0.0, 0.0])  # only row 0 is real
  got = mach_loss("softmax", logits, buckets, lm, rm)
  logp = np.asarray(jax.nn.log_softmax(logits))
  np.testing.assert_allclose(got, [-logp[0, 0, 1], -logp[1, 0, 0]], rtol=1e-5)


def test_unknown_loss():
  logits, buckets, lm, rm = _case()
  with pytest.raises(ValueError, match="loss="):
    mach_loss("hinge", logits, buckets, lm, rm)


def _hist_reference(logits, buckets, label_mask, row_mask):
  """softmax_hist as a dense [R, b, B] histogram target (the definition)."""
  hist = losses.bucket_targets(buckets, label_mask, logits.shape[-1], "add")
  targets = hist / jnp.maximum(hist.sum(axis=-1, keepdims=True), 1.0)
  weight = row_mask * (label_mask.sum(axis=-1) > 0)
  per_row = -(targets * jax.nn.log_softmax(logits)).sum(-1)
  return (per_row * weight).sum(1) / jnp.maximum(weight.sum(), 1.0)


def test_softmax_hist_gradient_equals_the_dense_histogram_definition():
  logits, buckets, lm, rm = _case()
  np.testing.assert_allclose(mach_loss("softmax_hist", logits, buckets, lm, rm),
                             _hist_reference(logits, buckets, lm, rm), rtol=1e-6)
  got = jax.grad(lambda z: mach_loss("softmax_hist", z, buckets, lm, rm).sum())(logits)
  ref = jax.grad(lambda z: _hist_reference(z, buckets, lm, rm).sum())(logits)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_softmax_hist_gradient_keeps_at_most_two_logit_sized_buffers():
  R, b, B, L = 4, 256, 2048, 4
  logits = jnp.zeros((R, b, B))
  buckets = jnp.zeros((R, b, L), jnp.int32)
  lm, rm = jnp.ones((b, L), bool), jnp.ones(b)
  grad = jax.jit(jax.grad(lambda z: mach_loss("softmax_hist", z, buckets, lm, rm).sum()))
  temp = grad.lower(logits).compile().memory_analysis().temp_size_in_bytes
  # The dense histogram and its normalised target were two more [R, b, B] buffers.
  assert temp <= 2 * logits.nbytes, temp
