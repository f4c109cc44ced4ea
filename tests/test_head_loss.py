"""The loss of the layers above the input table over slices of the batch: the whole
batch's loss and gradient, with one slice's logits live."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import head_loss, losses, model as model_lib
from tests.helpers import flat, run_steps

ONE = (("data", 1), ("rep", 1))
real_in_slices = head_loss._in_slices


def _case(R=2, b=16, H=8, B=32, L=3, hidden=(8,), seed=0):
  model = model_lib.MACH(num_repetitions=R, num_features=20, num_buckets=B, hidden=hidden)
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = {"indices": jnp.zeros(4, jnp.int32), "values": jnp.ones(4), "segments":
       jnp.zeros(4, jnp.int32), "mask": jnp.ones(b)}
  params = model.init(k[0], {**x, "mask": jnp.ones(2)})["params"]
  _, rest = model_lib.split_table(params)
  heads = dict(rest["reps"])
  heads.pop("embedding_bias")
  h = jax.random.normal(k[1], (R, b, H))
  buckets = jax.random.randint(k[2], (R, b, L), 0, B)
  label_mask = jax.random.uniform(k[3], (b, L)) < 0.7
  row_mask = jnp.ones(b).at[-3:].set(0)  # Batch padding.
  return model, heads, h, buckets, label_mask, row_mask


@pytest.mark.parametrize("loss", losses.LOSSES)
@pytest.mark.parametrize("hidden", [(8,), (8, 6)])
def test_slices_give_the_whole_batch_loss_and_gradient(loss, hidden):
  model, heads, h, buckets, lm, rm = _case(hidden=hidden)

  def mean(rows):
    def f(heads, h):
      s, c = head_loss.head_loss_sums(model, heads, h, buckets, lm, rm, loss, rows)
      return (s / c * jnp.array([1.0, 3.0])).sum()  # Each repetition its own cotangent.
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(heads, h)

  whole_value, whole_grads = mean(16)
  for rows in (1, 4, 8):
    value, grads = mean(rows)
    np.testing.assert_allclose(value, whole_value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(whole_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_slice_rows_divide_the_batch_and_fit_the_budget():
  assert head_loss.slice_rows(1, 1024, 4096) == 256  # 4 MB of float32 logits a slice.
  assert head_loss.slice_rows(8, 256, 1024) == 128
  assert head_loss.slice_rows(1, 256, 1024) == 256  # Fits: one slice, the whole batch.
  assert head_loss.slice_rows(1, 1000, 4096) == 250
  assert head_loss.slice_rows(1, 997, 4096) == 997  # A prime: no slices (not 997 of one).
  with pytest.raises(ValueError, match="does not divide"):
    model, heads, h, buckets, lm, rm = _case()
    head_loss.head_loss_sums(model, heads, h, buckets, lm, rm, "bce", rows=5)


def test_the_1m_catalogues_step_holds_one_slice_of_logits():
  """b = 1,024, B = 4,096, one repetition: the whole batch's gradient keeps two logit-sized
  [1024, 4096] buffers (32 MB); in slices, one slice's."""
  R, b, H, B = 1, 1024, 128, 4096
  model, heads, _, _, _, _ = _case(R=R, b=8, H=H, B=B, hidden=(H,))
  h = jnp.zeros((R, b, H))
  buckets = jnp.zeros((R, b, 2), jnp.int32)
  lm, rm = jnp.ones((b, 2), bool), jnp.ones(b)

  def temp(rows):
    f = lambda heads, h: head_loss.head_loss_sums(model, heads, h, buckets, lm, rm,
                                                  "softmax_hist", rows)[0].sum()
    grad = jax.jit(jax.grad(f, argnums=(0, 1)))
    return grad.lower(heads, h).compile().memory_analysis().temp_size_in_bytes

  logits = 4 * b * B
  assert temp(b) >= 2 * logits, temp(b)
  assert temp(None) <= logits, temp(None)


@pytest.mark.parametrize("mesh, kwargs, in_slices", [
    (ONE, {"row_sparse": True}, True),  # The touched rows, gathered.
    (ONE, {"row_sparse": True, "sequential": True, "input_dim": 256}, True),  # In the stack.
    (ONE, {"row_sparse": True, "sequential": True, "hidden_dropout": 0.3}, True),
    ((("data", 1), ("rep", 4)), {"row_sparse": True, "sequential": True}, True),
    ((("data", 1), ("rep", 4)), {"row_sparse": False}, False),  # Dense Adam: no slices.
])
def test_a_step_over_slices_trains_like_one_over_the_whole_batch(monkeypatch, mesh, kwargs,
                                                                  in_slices):
  whole = run_steps(mesh, num_steps=3, **kwargs)
  monkeypatch.setattr(head_loss, "SLICE_BYTES", 1)  # Slices of one row...
  calls = []
  monkeypatch.setattr(head_loss, "_in_slices", lambda sums, rows: calls.append(rows) or
                      real_in_slices(sums, rows))
  sliced = run_steps(mesh, num_steps=3, **kwargs)
  assert set(calls) == ({1} if in_slices else set())  # ...where it may.
  a, b = flat(whole), flat(sliced)
  assert a.keys() == b.keys()
  for k in a:  # atol: as tests/test_sequential_reps.py (a different summation order).
    np.testing.assert_allclose(b[k], a[k], rtol=2e-5, atol=1e-5, err_msg=k)
