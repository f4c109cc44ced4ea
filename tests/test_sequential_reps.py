"""Sequential repetitions (``config.model.sequential_reps``): the R repetitions run one after
another (lax.map) instead of side by side (vmap). The same parameters train to the same
values, on one device and on a 'rep' mesh (not with data parallelism: refused), and the
compiled step holds less temporary memory."""

import numpy as np
import pytest

from tests.helpers import run_steps, tiny_setup

ONE = (("data", 1), ("rep", 1))


@pytest.mark.parametrize("mesh, kwargs", [
    (ONE, {}),
    (ONE, {"row_sparse": True, "input_dim": 256}),
    (ONE, {"row_sparse": True, "shared_input": True}),
    ((("data", 1), ("rep", 4)), {"row_sparse": True, "input_dim": 256}),
])
def test_sequential_repetitions_train_like_vmapped_ones(mesh, kwargs):
  side_by_side = run_steps(mesh, num_steps=3, **kwargs)
  one_by_one = run_steps(mesh, num_steps=3, sequential=True, **kwargs)
  flat_a, flat_b = _flat(side_by_side), _flat(one_by_one)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_allclose(flat_b[k], flat_a[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_sequential_repetitions_refuse_data_parallelism():
  setup, batches = tiny_setup((("data", 2), ("rep", 4)), sequential=True)
  with pytest.raises(ValueError, match="sequential_reps=True runs on meshes without data"):
    setup.run(setup.state, batches[0])


def test_sequential_step_holds_less_temporary_memory():
  """The compiled step's temporaries (XLA's own accounting) shrink with one repetition's
  embedding-bag rows live at a time instead of all R."""
  sizes = {}
  for sequential in (False, True):
    setup, batches = tiny_setup(ONE, R=8, row_sparse=True, input_dim=256,
                                sequential=sequential)
    compiled = setup.train_step.lower(setup.state, setup.put(batches[0])).compile()
    sizes[sequential] = compiled.memory_analysis().temp_size_in_bytes
  assert sizes[True] < 0.6 * sizes[False], sizes  # 1.6 MB against 3.2 MB.


@pytest.mark.parametrize("input_dim", [0, 256])
def test_the_logits_function_runs_repetitions_one_at_a_time(input_dim):
  """``make_logits_fn`` (evaluation, the Predictor's batches) runs per-repetition tables one
  repetition at a time whatever training did: the logits of the vmapped model, with one
  repetition's gathered rows live instead of R."""
  import functools

  import jax

  from mach_jax import steps
  setup, batches = tiny_setup(ONE, R=8, row_sparse=True, input_dim=input_dim)
  assert not setup.parts.model.sequential
  params, batch = setup.state.params, setup.put(batches[0])
  side_by_side = jax.jit(functools.partial(steps.logits_step, model=setup.parts.model,
                                           spec=setup.parts.spec))
  np.testing.assert_allclose(setup.logits_fn(params, batch), side_by_side(params, batch),
                             rtol=1e-5, atol=1e-6)
  temp = {name: f.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
          for name, f in (("one", setup.logits_fn), ("all", side_by_side))}
  assert temp["one"] < 0.6 * temp["all"], temp


def _flat(tree):
  import jax
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}
