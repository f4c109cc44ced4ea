"""Optimizers: row-sparse (lazy) Adam for the input table, and its config checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import model as model_lib, optim, sharding, steps, train
from tests.helpers import tiny_config, tiny_setup


def _reference(table, mu, nu, count, rows, grads, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
  """Adam on the listed rows; ``nu`` [D, 1]: one second moment per row, of mean(g^2)."""
  table, mu, nu = table.copy(), mu.copy(), nu.copy()
  t = count + 1
  for r, g in zip(rows, grads):
    if r >= table.shape[0]:
      continue
    mu[r] = b1 * mu[r] + (1 - b1) * g
    nu[r] = b2 * nu[r] + (1 - b2) * (g * g if nu.shape[1] > 1 else np.mean(g * g))
    table[r] -= lr * (mu[r] / (1 - b1 ** t)) / (np.sqrt(nu[r] / (1 - b2 ** t)) + eps)
  return table, mu, nu


@pytest.mark.parametrize("rowwise", [False, True], ids=["per_entry", "rowwise_nu"])
def test_update_matches_reference_and_leaves_other_rows_alone(rowwise):
  rng = np.random.default_rng(0)
  D, H = 10, 3
  table = rng.normal(size=(D, H)).astype(np.float32)
  adam = optim.row_sparse_adam(1e-2, rowwise=rowwise)
  state = adam.init(jnp.asarray(table))
  assert state.nu.shape == ((D, 1) if rowwise else (D, H))
  ref = (table, np.zeros_like(table), np.zeros(state.nu.shape, np.float32))
  t = jnp.asarray(table)
  for step, rows in enumerate([[1, 4, 7, D, D], [4, 2, D, D, D]]):
    grads = rng.normal(size=(5, H)).astype(np.float32)
    grads[np.asarray(rows) >= D] = 0
    t, state = adam.update(t, jnp.asarray(rows, jnp.int32), jnp.asarray(grads), state)
    ref = _reference(*ref, step, rows, grads)
    np.testing.assert_allclose(np.asarray(t), ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.mu), ref[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(state.nu), ref[2], rtol=1e-5, atol=1e-9)
  untouched = [0, 3, 5, 6, 8, 9]
  np.testing.assert_array_equal(np.asarray(t)[untouched], table[untouched])
  assert int(state.count) == 2


def test_first_step_equals_dense_adam_then_untouched_rows_stay_put():
  dense, batches = tiny_setup((("data", 1), ("rep", 1)), R=4, num_batches=2)
  sparse, _ = tiny_setup((("data", 1), ("rep", 1)), R=4, row_sparse=True)
  p = dense.parts
  batch = jax.tree.map(jnp.asarray, batches[0])
  kw = dict(model=p.model.clone(embedding_bag="gather"), tx=p.tx, spec=p.spec,
            loss=p.config.model.loss)
  dense_state, _ = jax.jit(lambda s, b: steps.train_step(s, b, **kw))(dense.state, batch)
  step = jax.jit(lambda s, b: steps.train_step(s, b, table_tx=sparse.parts.table_tx, **kw))
  sparse_state, m = step(sparse.state, batch)
  for a, b in zip(jax.tree.leaves(dense_state.params), jax.tree.leaves(sparse_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  # Second step: rows of features absent from batch 2 keep parameters and moments.
  before = sparse_state
  after, _ = step(jax.tree.map(jnp.copy, before), jax.tree.map(jnp.asarray, batches[1]))
  b2 = batches[1]
  touched = np.unique(b2["indices"][b2["values"] != 0])
  untouched = np.setdiff1d(np.arange(before.params["reps"]["embedding"].shape[1]), touched)
  for get in (lambda s: s.params["reps"]["embedding"],
              lambda s: s.table_opt_state.mu, lambda s: s.table_opt_state.nu):
    np.testing.assert_array_equal(np.asarray(get(after))[:, untouched],
                                  np.asarray(get(before))[:, untouched])
    assert not np.array_equal(np.asarray(get(after))[:, touched],
                              np.asarray(get(before))[:, touched])


@pytest.mark.parametrize("kwargs", [{}, {"sequential": True, "input_dim": 256},
                                    {"sequential": True}])
def test_row_sparse_step_is_collective_free_on_a_rep_mesh(kwargs):
  """Also one repetition at a time (``sequential``), with and without the input hash."""
  setup, batches = tiny_setup((("data", 1), ("rep", 8)), R=8, row_sparse=True, **kwargs)
  assert setup.parts.table_tx is not None
  hlo = setup.train_step.lower(setup.state, setup.put(batches[0])).compile().as_text()
  assert sharding.collectives(hlo) == {}


@pytest.mark.parametrize("table_dtype, moments_dtype, rowwise", [
    ("float32", "", False), ("bfloat16", "", False), ("float32", "bfloat16", False),
    ("float32", "", True)])
def test_row_sparse_training_learns(tmp_path, table_dtype, moments_dtype, rowwise):
  c = tiny_config()
  c.optimizer.update(row_sparse=True, table_moments_dtype=moments_dtype, rowwise_nu=rowwise)
  c.model.table_dtype = table_dtype
  results = train.train_and_evaluate(c, str(tmp_path))
  assert results["P@1"] > 0.2
  # The table in table_dtype, its moments in moments_dtype (default: the table's), the
  # second one [D, 1] when rowwise; everything else in float32. R = 4, D = 1000, H = 64.
  size = {"float32": 4, "bfloat16": 2}
  table, moment = size[table_dtype], size[moments_dtype or table_dtype]
  table_bytes = 4 * 1000 * (64 * table + 64 * moment + (1 if rowwise else 64) * moment)
  rest = results["state_bytes"] - table_bytes
  # The other parameters and their two moments, the step, and two Adam counts per rep.
  assert rest == 3 * 4 * (64 + 64 * 32 + 32) * 4 + 4 + 2 * 4 * 4, rest


def test_bfloat16_table_needs_row_sparse_adam():
  c = tiny_config()
  c.model.table_dtype = "bfloat16"
  from mach_jax import config as config_lib
  with pytest.raises(ValueError, match="needs config.optimizer.row_sparse=True"):
    config_lib.build(c, 100, 50, 10)


@pytest.mark.parametrize("field, value, match", [
    ("name", "sgd", "name='sgd'"), ("clip_norm", 1.0, "clip_norm=1.0"),
    ("table_moments_dtype", "float16", "table_moments_dtype='float16'")])
def test_unsupported_combinations_are_rejected(field, value, match):
  c = tiny_config()
  c.optimizer.row_sparse = True
  c.optimizer[field] = value
  with pytest.raises(ValueError, match=match):
    optim.make_table_optimizer(c, 10)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_table_lr_scale_scales_only_the_table_step(schedule):
  c = tiny_config()
  c.optimizer.update(row_sparse=True, schedule=schedule, warmup_steps=2, learning_rate=1e-2)
  rows, grads = jnp.asarray([0, 2], jnp.int32), jnp.ones((2, 3), jnp.float32)
  table = jnp.zeros((4, 3), jnp.float32)

  def moved(scale):
    c.optimizer.table_lr_scale = scale
    tx = optim.make_table_optimizer(c, 100)
    init, update = tx.init, tx.update
    state = init(table)
    for _ in range(3):  # Past the warm-up, so the cosine rate is not zero.
      new, state = update(table, rows, grads, state)
    return np.asarray(new - table)

  np.testing.assert_allclose(moved(4.0), 4.0 * moved(1.0), rtol=1e-6)
  assert np.abs(moved(1.0)[[0, 2]]).min() > 0 and not moved(4.0)[[1, 3]].any()


@pytest.mark.parametrize("field, value", [("table_lr_scale", 3.0), ("rowwise_nu", True),
                                          ("table_moments_dtype", "bfloat16")])
def test_table_options_without_row_sparse_are_an_error(field, value):
  c = tiny_config()
  c.optimizer[field] = value
  with pytest.raises(ValueError, match=f"{field}={value} needs"):
    optim.make_table_optimizer(c, 10)


@pytest.mark.parametrize("kwargs", [{"input_dim": 256}, {"shared_input": True},
                                    {"input_dim": 256, "rowwise_nu": True},
                                    {"input_dim": 256, "sequential": True, "rowwise_nu": True}],
                         ids=["input_hash", "shared_input", "rowwise_nu", "sequential_rowwise"])
def test_whole_table_update_equals_gathering_the_touched_rows(monkeypatch, kwargs):
  def train(whole):
    monkeypatch.setattr(steps, "whole_table_update", lambda T, D: whole)
    setup, batches = tiny_setup((("data", 1), ("rep", 1)), R=4, num_batches=3,
                                row_sparse=True, **kwargs)
    state = setup.state
    for b in batches:
      state, _ = setup.run(state, b)
    return jax.tree.map(np.asarray, (state.params, state.table_opt_state))

  masked, gathered = train(True), train(False)
  # Not bitwise: the table's gradient is a scatter-add over the batch's ids into D rows in
  # one case and into the touched slots in the other, which sums a row's repeated ids in a
  # different order (seen: |diff| <= 4e-9 after 3 steps).
  for a, b in zip(jax.tree.leaves(masked), jax.tree.leaves(gathered)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs", [{}, {"input_dim": 256}, {"sequential": True},
                                    {"sequential": True, "input_dim": 256},
                                    {"shared_input": True}],
                         ids=["rows", "input_hash", "sequential", "sequential_hash", "shared"])
def test_row_sparse_adam_without_lazy_rows_is_adam(kwargs):
  """``optimizer.lazy_rows=False``: every row's moments decay and every row moves, as under
  optax's Adam on the whole table; the lazy update leaves rows the batches miss alone."""
  def train(**opt):
    setup, batches = tiny_setup((("data", 1), ("rep", 1)), R=4, num_batches=3, **opt,
                                **kwargs)
    state = setup.state
    for b in batches:
      state, _ = setup.run(state, b)
    return jax.tree.map(np.asarray, state.params), batches

  adam, batches = train(row_sparse=False)
  eager, _ = train(row_sparse=True, lazy_rows=False)
  lazy, _ = train(row_sparse=True)
  # Up to float rounding: the gradients sum a row's repeated ids in another order, and
  # Adam divides by sqrt(nu), which magnifies it where a gradient is tiny (seen: 8.5e-7).
  for a, b in zip(jax.tree.leaves(adam), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-6)
  # A row touched by the first batch only: Adam moves it in the later steps, lazy Adam not.
  table = lambda p: model_lib.split_table(p)[0]
  if not kwargs.get("input_dim"):
    ids = [set(b["indices"][b["values"] != 0].tolist()) for b in batches]
    once = sorted(ids[0] - ids[1] - ids[2])
    assert once, "the test needs a row that only the first batch touches"
    gap = np.abs(table(adam)[..., once, :] - table(lazy)[..., once, :]).max()
    assert gap > 1e-4, gap


@pytest.mark.parametrize("kwargs", [{}, {"input_dim": 256}], ids=["rows", "input_hash"])
def test_row_sparse_step_with_a_dense_bag_equals_the_gather(kwargs):
  """GPUs densify the gathered rows' bag ('auto' there; bag.gathered_rows_bag): the same
  update as the segment-sum of the CPU's gather, up to the order of the sums."""
  def train(bag):
    setup, batches = tiny_setup((("data", 1), ("rep", 1)), R=4, num_batches=3,
                                row_sparse=True, embedding_bag=bag, **kwargs)
    state = setup.state
    for b in batches:
      state, _ = setup.run(state, b)
    return jax.tree.map(np.asarray, (state.params, state.table_opt_state))

  dense, gather = train("dense"), train("gather")
  for a, b in zip(jax.tree.leaves(dense), jax.tree.leaves(gather)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_set_rows_writes_the_same_bits_and_drops_padding(dtype):
  x = jax.random.normal(jax.random.key(0), (50, 8)).astype(dtype)
  rows = jnp.array([3, 49, 50, 7], jnp.int32)  # 50 is padding.
  values = jax.random.normal(jax.random.key(1), (4, 8), jnp.float32)
  got = optim.set_rows(x, rows, values)
  want = x.at[rows].set(values.astype(dtype), mode="drop")
  assert got.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got.view(jnp.uint16) if dtype == jnp.bfloat16
                                           else got),
                                np.asarray(want.view(jnp.uint16) if dtype == jnp.bfloat16
                                           else want))


def test_a_bfloat16_table_is_not_widened_to_float32_around_its_update():
  """XLA:CPU has no bfloat16 scatter: a plain one converted the whole table (and each moment
  table) to float32 and back every step, 8x the step's time on WordNet."""
  D, H = 4096, 16
  tx = optim.row_sparse_adam(1e-2)
  table = jnp.zeros((D, H), jnp.bfloat16)
  state = tx.init(table)
  assert state.mu.dtype == state.nu.dtype == jnp.uint16  # bfloat16 moments, as their bits.
  rows = jnp.arange(0, 64, dtype=jnp.int32)
  hlo = jax.jit(tx.update).lower(table, rows, jnp.ones((64, H)), state).compile().as_text()
  # A convert fused into the gather of 64 rows reads only those; a fusion whose *output* is
  # a float32 table is the whole-table round trip.
  assert not re.search(rf"= f32\[{D},{H}\]\{{1,0\}} fusion\(", hlo)
  assert re.search(rf"= u16\[{D},{H}\]\{{1,0\}} fusion\(", hlo)  # The scatter, on bits.


def test_bfloat16_moments_are_not_widened_around_the_blocked_update():
  """The pass over the whole table in blocks (``dense_update_at``) writes each block of a
  bfloat16 moment table in place, as bits: written as bfloat16, XLA:CPU converted the whole
  [R, D, H] table to float32 and back around every block's write (8.4 s against 13 ms a
  repetition at the text config's shape)."""
  R, D, H = 2, 4 * optim.dense_block_rows(16), 16
  tx = optim.row_sparse_adam(1e-2, moments_dtype=jnp.bfloat16)
  tables = jnp.zeros((R, D, H), jnp.float32)
  states = jax.vmap(tx.init)(tables)
  hlo = jax.jit(tx.dense_update_at, donate_argnums=(0, 4)).lower(
      tables, 0, jnp.ones(D, bool), jnp.ones((D, H)), states).compile().as_text()
  assert f"bf16[{R},{D},{H}]" not in hlo and f"f32[{R},{D},{H}]{{2,1,0}} convert" not in hlo
  # The two moments' in-place block writes, on their bits.
  assert len(re.findall(rf"= u16\[{R},{D},{H}\]\{{2,1,0\}} fusion\(", hlo)) >= 2


@pytest.mark.parametrize("rowwise", [False, True], ids=["per_entry", "rowwise_nu"])
@pytest.mark.parametrize("dtype, moments_dtype", [
    (jnp.float32, None), (jnp.bfloat16, None), (jnp.float32, jnp.bfloat16)],
    ids=["float32", "bfloat16", "bfloat16_moments"])
def test_dense_update_at_updates_one_repetition_in_blocks_like_dense_update(
    dtype, moments_dtype, rowwise):
  """``dense_update_at`` (the per-repetition step's in-place update, in blocks of
  ``dense_block_rows`` rows and a remainder) writes repetition r as ``dense_update`` would
  and leaves the other repetitions' tables and moments alone."""
  R, H, r = 3, 8, 1
  D = 2 * optim.dense_block_rows(H) + 37
  rng = np.random.default_rng(0)
  tx = optim.row_sparse_adam(1e-2, rowwise=rowwise, moments_dtype=moments_dtype)
  tables = jnp.asarray(rng.normal(size=(R, D, H)), dtype)
  states = jax.vmap(tx.init)(tables)
  m_dtype = moments_dtype or dtype
  # 16-bit moments are stored as their bits.
  stored = jnp.uint16 if m_dtype == jnp.bfloat16 else m_dtype
  assert states.mu.dtype == states.nu.dtype == stored
  as_stored = lambda a: jax.lax.bitcast_convert_type(jnp.asarray(a, m_dtype), stored)
  states = states._replace(mu=as_stored(rng.normal(size=(R, D, H))),
                           nu=as_stored(rng.uniform(size=states.nu.shape)),
                           count=jnp.asarray([4, 7, 2], jnp.int32))
  touched = jnp.asarray(rng.uniform(size=D) < 0.5)
  grads = jnp.asarray(rng.normal(size=(D, H)), jnp.float32)
  got_tables, got = jax.jit(tx.dense_update_at)(tables, r, touched, grads, states)
  want_table, want = tx.dense_update(tables[r], touched, grads,
                                     jax.tree.map(lambda a: a[r], states))
  f32 = lambda a: np.asarray(a, np.float32)
  value = lambda a: f32(jax.lax.bitcast_convert_type(a, m_dtype))
  tol = dict(rtol=1e-6, atol=1e-7) if m_dtype == jnp.float32 else dict(rtol=2 ** -8, atol=0)
  for a, b in [(got.mu[r], want.mu), (got.nu[r], want.nu)]:
    np.testing.assert_allclose(value(a), value(b), **tol)
  got_table, want_table, old = f32(got_tables[r]), f32(want_table), f32(tables[r])
  if m_dtype == jnp.float32:
    np.testing.assert_allclose(got_table, want_table, **tol)
  elif dtype == jnp.float32:
    # The step reads the moments back as stored, in bfloat16: within a few units of their
    # rounding of the step.
    assert (np.abs(got_table - want_table) <= 2 ** -6 * np.abs(want_table - old) + 1e-7).all()
  else:
    # The step reads the moments back as stored, in bfloat16: within a unit of rounding of
    # the old value and of the step, and equal to the bit for nearly every entry.
    bound = 2 ** -7 * (np.abs(old) + np.abs(want_table - old))
    assert (np.abs(got_table - want_table) <= bound).all()
    assert (got_table != want_table).mean() < 0.01
  assert int(got.count[r]) == 8
  others = np.asarray([i for i in range(R) if i != r])
  for a, b in [(got_tables, tables), (got.mu, states.mu), (got.nu, states.nu),
               (got.count, states.count)]:
    np.testing.assert_array_equal(f32(a)[others], f32(b)[others])


def test_dense_blocks_are_small_on_cpu_and_whole_rows_anywhere():
  from mach_jax import row_sparse_adam
  assert optim.dense_block_rows(256, "cpu") == row_sparse_adam.DENSE_BLOCK_BYTES_CPU // 1024 == 128
  assert optim.dense_block_rows(256, "gpu") == 2048
  assert optim.dense_block_rows(1 << 20, "cpu") == 1  # Wider than a block: one row.


def test_table_update_bench_times_every_way(tmp_path):
  import json
  import subprocess
  import sys
  subprocess.run([sys.executable, "-m", "experiments.bench.table_update", "--D", "300",
                  "--H", "8", "--R", "2", "--rounds", "1", "--repeat", "2",
                  "--out", str(tmp_path)], check=True)
  out = json.load(open(tmp_path / "table_update.json"))
  assert set(out["ms_per_repetition"]) == {"float32", "bfloat16 moments", "rowwise nu", "both"}
  assert all(len(v) == 1 and v[0] > 0 for v in out["ms_per_repetition"].values())


@pytest.mark.parametrize("input_dim", [0, 64])
def test_row_sparse_adam_refuses_data_parallelism(input_dim):
  """Each device's rows of a batch touch their own table rows: refused by name, not the
  shard_map error about replication it used to end in."""
  setup, batches = tiny_setup((("data", 2), ("rep", 4)), row_sparse=True, input_dim=input_dim)
  with pytest.raises(ValueError, match="row_sparse=True runs on meshes without data"):
    setup.run(setup.state, batches[0])
