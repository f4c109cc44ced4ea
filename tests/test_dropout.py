"""Dropout (``config.train.input_dropout``, ``hidden_dropout``): each repetition drops each
nonzero of a training batch, or each of its input layer's activations, with probability p,
by its own seeded mask, and scales the rest by 1/(1-p).
The masks depend on the step and the repetition, not on the mesh or on how the
repetitions are looped, so the repetitions stay independent."""

import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import config as config_lib, dropout
from tests.helpers import flat, run_steps, tiny_config, tiny_setup


def _x(T=4000):
  indices = jnp.arange(T, dtype=jnp.int32) % 97
  values = jnp.where(jnp.arange(T) < T - 100, 1.0 + jnp.arange(T) % 3, 0.0)  # 100 padding.
  return {"indices": indices, "values": values, "segments": jnp.zeros(T, jnp.int32)}


def test_each_repetition_drops_its_own_nonzeros_at_the_rate_and_scales_the_rest():
  x, p = _x(), 0.25
  seeds = jnp.asarray([7, 8, 9], jnp.uint32)
  out = dropout.drop_inputs(x, p, jnp.int32(3), seeds)
  values, indices = np.asarray(out["values"]), np.asarray(out["indices"])
  assert values.shape == indices.shape == (3, 4000)
  np.testing.assert_array_equal(indices, np.broadcast_to(np.asarray(x["indices"]), (3, 4000)))
  real = np.asarray(x["values"]) != 0
  kept = values != 0
  assert not kept[:, ~real].any()  # Padding stays padding.
  rates = 1 - kept[:, real].mean(axis=1)
  assert np.all(np.abs(rates - p) < 0.03), rates  # 3,900 draws each: sd 0.007.
  np.testing.assert_allclose(values[kept], (np.broadcast_to(x["values"], (3, 4000)) /
                                            (1 - p))[kept], rtol=1e-6)
  assert (kept[0] != kept[1]).any() and (kept[1] != kept[2]).any()  # Masks of their own.


def test_the_mask_changes_with_the_step_and_repeats_for_the_same_step():
  x, seeds = _x(), jnp.asarray([1, 2], jnp.uint32)
  a = dropout.drop_inputs(x, 0.5, jnp.int32(0), seeds)["values"]
  again = dropout.drop_inputs(x, 0.5, jnp.int32(0), seeds)["values"]
  b = dropout.drop_inputs(x, 0.5, jnp.int32(1), seeds)["values"]
  np.testing.assert_array_equal(a, again)
  assert (np.asarray(a) != np.asarray(b)).any()
  # A repetition's mask is its own seed's, whichever repetitions share the call.
  alone = dropout.drop_inputs(x, 0.5, jnp.int32(0), seeds[1:])["values"]
  np.testing.assert_array_equal(alone[0], a[1])


def test_the_hidden_mask_is_each_repetitions_own_and_scaled():
  x, p = _x(), 0.25
  x["mask"] = jnp.ones(300, bool)
  out = dropout.drop_hidden(x, p, jnp.int32(5), jnp.asarray([3, 4], jnp.uint32), H=64)
  keep = np.asarray(out["hidden_keep"])
  assert keep.shape == (2, 300, 64) and out["indices"].shape == (2, 4000)
  np.testing.assert_allclose(np.unique(keep), [0.0, 1 / (1 - p)], rtol=1e-6)
  assert abs((keep == 0).mean() - p) < 0.02 and (keep[0] != keep[1]).any()


ONE = (("data", 1), ("rep", 1))


@pytest.mark.parametrize("dropout", [{"input_dropout": 0.3}, {"hidden_dropout": 0.3}])
@pytest.mark.parametrize("kwargs", [
    {"row_sparse": True},  # The same features for every repetition: broadcast, then masked.
    {"row_sparse": True, "input_dim": 256},  # The input hash; the whole table by a mask.
    {},  # Dense Adam.
])
def test_dropout_trains_the_same_one_by_one_side_by_side_and_across_devices(kwargs, dropout):
  base = flat(run_steps(ONE, **dropout, **kwargs))
  without = flat(run_steps(ONE, **kwargs))
  assert any(not np.allclose(base[k], without[k]) for k in base)  # Dropout did something.
  for other in (run_steps(ONE, sequential=True, **dropout, **kwargs),
                run_steps((("data", 1), ("rep", 4)), **dropout, **kwargs)):
    other = flat(other)
    for k in base:  # As tests/test_sequential_reps.py and test_sharding.py allow.
      np.testing.assert_allclose(other[k], base[k], rtol=2e-5, atol=1e-5, err_msg=k)


def test_a_rate_outside_zero_to_one_and_a_shared_table_are_refused():
  c = tiny_config()
  c.train.hidden_dropout = 1.0
  with pytest.raises(ValueError, match=r"config.train.hidden_dropout=1.0: expected 0 <= p < 1"):
    config_lib.check_loop(c)
  setup, batches = tiny_setup(ONE, row_sparse=True, shared_input=True, input_dropout=0.2)
  with pytest.raises(ValueError, match="input_dropout=0.2 draws a mask per repetition"):
    setup.run(setup.state, batches[0])

