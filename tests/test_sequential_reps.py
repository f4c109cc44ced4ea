"""Sequential repetitions (``config.model.sequential_reps``): the R repetitions run one after
another (lax.map) instead of side by side (vmap). The same parameters train to the same
values, on one device and on a 'rep' mesh (not with data parallelism: refused), and the
compiled step holds less temporary memory."""

import re

import numpy as np
import pytest

from tests.helpers import run_steps, tiny_setup

ONE = (("data", 1), ("rep", 1))


@pytest.mark.parametrize("mesh, kwargs", [
    (ONE, {}),
    (ONE, {"row_sparse": True, "input_dim": 256}),  # The whole table by a mask.
    (ONE, {"row_sparse": True}),  # The touched rows, gathered.
    (ONE, {"row_sparse": True, "shared_input": True}),
    ((("data", 1), ("rep", 4)), {"row_sparse": True, "input_dim": 256}),
])
def test_sequential_repetitions_train_like_vmapped_ones(mesh, kwargs):
  side_by_side = run_steps(mesh, num_steps=3, **kwargs)
  one_by_one = run_steps(mesh, num_steps=3, sequential=True, **kwargs)
  flat_a, flat_b = _flat(side_by_side), _flat(one_by_one)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    # atol: 1% of one Adam step (lr 1e-3); where a gradient is near 0, Adam's g / sqrt(nu)
    # carries the float rounding of a different summation order up to ~3e-6.
    np.testing.assert_allclose(flat_b[k], flat_a[k], rtol=2e-5, atol=1e-5, err_msg=k)


def test_sequential_repetitions_refuse_data_parallelism():
  setup, batches = tiny_setup((("data", 2), ("rep", 4)), sequential=True)
  with pytest.raises(ValueError, match="sequential_reps=True runs on meshes without data"):
    setup.run(setup.state, batches[0])


@pytest.mark.parametrize("input_dim", [256, 0])
def test_sequential_step_holds_one_repetition_and_copies_no_table(input_dim):
  """The compiled step (XLA's own accounting and its program): one repetition's
  temporaries live at a time, and the stacked [R, D, H] table and moments are updated in
  place, never copied (the moments' writes ordered after the reads that need the old ones)."""
  sizes = {}
  for sequential in (False, True):
    setup, batches = tiny_setup(ONE, R=8, row_sparse=True, input_dim=input_dim,
                                sequential=sequential)
    compiled = setup.train_step.lower(setup.state, setup.put(batches[0])).compile()
    sizes[sequential] = compiled.memory_analysis().temp_size_in_bytes
    table = setup.state.params["reps"]["embedding"]
    copies = re.findall(rf"= f32\[{','.join(map(str, table.shape))}\]\S* copy\(",
                        compiled.as_text())
    if sequential:
      assert not copies, copies
  # 0.7 MB against 2.8 MB (input hash, the whole table by a mask); 1.9 against 11 MB.
  assert sizes[True] < 0.3 * sizes[False], sizes


def test_the_whole_table_step_reads_each_repetition_inside_the_stack(monkeypatch):
  """One repetition at a time, a whole-table gradient (input hash, long batches) reads
  repetition r's [D, H] table inside the stacked [R, D, H] table: no slice of it is copied
  out before the embedding bag's loop over chunks, and the numbers are unchanged (above)."""
  from mach_jax import bag, row_sparse_adam
  monkeypatch.setattr(bag, "BAG_CHUNK_CPU", 64)  # The tiny batch in a loop of chunks,
  monkeypatch.setattr(row_sparse_adam, "DENSE_BLOCK_BYTES_CPU", 64 * 64 * 4)  # the update in
  # blocks of 64 rows.
  setup, batches = tiny_setup(ONE, R=8, row_sparse=True, input_dim=256, sequential=True)
  hlo = setup.train_step.lower(setup.state, setup.put(batches[0])).compile().as_text()
  R, D, H = setup.state.params["reps"]["embedding"].shape
  assert re.search(r"while", hlo)
  slices = re.findall(rf"= f32\[(?:1,)?{D},{H}\]\S* fusion\([^\n]*?calls=%wrapped_dynamic-slice",
                      hlo)
  assert not slices, slices


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
