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


def _flat(tree):
  import jax
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}
