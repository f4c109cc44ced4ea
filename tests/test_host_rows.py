"""The input-table rows a training batch touches, found on the host (``batching.touched_rows``):
the lists themselves, and a train step that reads them instead of finding them on the device
trains to the same parameters with row arrays sized by the batch's distinct ids."""

import jax
import numpy as np
import pytest

from mach_jax import sharding
from mach_jax.data import batching
from tests.helpers import flat, tiny_setup

ONE = (("data", 1), ("rep", 1))


def test_each_block_lists_its_distinct_ids_and_every_nonzero_finds_its_row():
  indices = np.array([[7, 3, 7, 9, 0, 0], [2, 2, 5, 0, 0, 0]], np.int32)
  values = np.array([[1, 2, 3, 4, 0, 0], [1, 1, 0.5, 0, 0, 0]], np.float32)
  values[0, 3] = 0.0  # An explicit zero touches no row, as on the device.
  out = batching.touched_rows(indices, values, num_rows=10, floor=8)
  U = out["rows"].size // 2
  rows, local = out["rows"].reshape(2, U), out["local"].reshape(2, 6)
  assert U == 8
  np.testing.assert_array_equal(rows, [[3, 7] + [10] * 6, [2, 5] + [10] * 6])
  np.testing.assert_array_equal(local, [[1, 0, 1, 7, 7, 7], [0, 0, 1, 7, 7, 7]])
  real = values != 0
  np.testing.assert_array_equal(np.take_along_axis(rows, local, 1)[real], indices[real])


def test_a_block_with_more_distinct_ids_than_the_floor_widens_the_rows():
  indices = np.arange(20, dtype=np.int32)[None]
  out = batching.touched_rows(indices, np.ones((1, 20), np.float32), num_rows=100, floor=8)
  assert out["rows"].size > 20 and out["rows"][-1] == 100  # Nothing dropped; a padding slot.
  np.testing.assert_array_equal(out["rows"][:20], np.arange(20))


def test_the_floor_covers_shuffled_batches_not_just_the_first_rows():
  """The first rows of a set are often alike (a sorted file): the floor comes from random
  batches, so a shuffled epoch's batches share one width of rows."""
  import scipy.sparse as sp
  rng = np.random.default_rng(0)
  N, D, nnz, b = 2000, 5000, 10, 64
  ids = rng.integers(0, D, size=(N, nnz))
  ids[:b] = rng.integers(0, 20, size=(b, nnz))  # The first batch touches at most 20 rows.
  X = sp.csr_matrix((np.ones(N * nnz, np.float32), ids.ravel(), np.arange(0, N * nnz + 1, nnz)),
                    shape=(N, D))
  X.sum_duplicates()
  Y = sp.csr_matrix((np.ones(N, np.float32), np.zeros(N, int), np.arange(N + 1)), shape=(N, 1))
  widths = batching.Widths.for_data(X, Y, b, distinct=True)
  assert widths.distinct > 500
  shapes = {batching.make_batch(X, Y, rows, b, widths)["rows"].size
            for rows in batching.batch_rows(N, b, shuffle=True, seed=1)}
  assert shapes == {widths.distinct}


def _without_host_rows(setup):
  """The same setup's step compiled for batches without ``rows`` / ``local``."""
  first = sharding.features(setup.first_batch)
  return setup._replace(train_step=sharding.make_train_step(setup.parts, setup.mesh,
                                                            setup.state, first),
                        batch_shardings=sharding.batch_shardings(setup.mesh, first))


@pytest.mark.parametrize("kwargs", [
    {},  # The host's rows and slots.
    {"sequential": True},
    {"input_dim": 4096},  # Hashed ids: the host's count sizes the device's search.
    {"input_dropout": 0.2},  # Per-repetition ids, likewise.
    {"shared_input": True},
])
def test_a_step_on_the_hosts_rows_trains_as_the_device_rows(kwargs):
  setup, batches = tiny_setup(ONE, R=4, num_batches=3, row_sparse=True, **kwargs)
  b = batches[0]
  assert set(batching.HOST_ROWS) <= b.keys()
  assert b["rows"].size <= b["indices"].size // 2, (b["rows"].size, b["indices"].size)
  device = _without_host_rows(setup)
  host_state, device_state = setup.state, jax.tree.map(np.array, setup.state)
  device_state = jax.device_put(device_state, sharding.state_shardings(setup.mesh, setup.state))
  for b in batches:
    host_state, _ = setup.run(host_state, b)
    device_state, _ = device.run(device_state, sharding.features(b))
  a, d = flat(jax.device_get(host_state.params)), flat(jax.device_get(device_state.params))
  for k in a:
    np.testing.assert_allclose(a[k], d[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_the_compiled_step_gathers_the_batchs_distinct_rows_not_one_per_nonzero():
  setup, batches = tiny_setup(ONE, R=4, row_sparse=True)
  b = setup.put(batches[0])
  U, T = b["rows"].size, b["indices"].size
  H = setup.parts.model.hidden[0]
  host = setup.train_step.lower(setup.state, b).compile().as_text()
  device = _without_host_rows(setup).train_step.lower(
      setup.state, sharding.features(b)).compile().as_text()
  R = setup.parts.spec.R
  assert f"f32[{R},{T + 1},{H}]" in device and f"f32[{R},{T + 1},{H}]" not in host
  assert f"f32[{R},{U},{H}]" in host
