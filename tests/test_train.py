import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import bibtex
from mach_jax import data as data_lib, loop, state as state_lib, steps, train
from mach_jax.data import batching
from tests.helpers import flat, popular_baseline, shared_file, tiny_config, tiny_setup


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tiny"))
  return workdir, train.train_and_evaluate(tiny_config(), workdir)


def test_tiny_run_learns_and_writes_results(tiny_run):
  workdir, results = tiny_run
  loss = _losses(workdir)
  assert loss[-1] < 0.8 * loss[0]  # From about log(B) = 3.47 to below 2.8.
  tr, te = data_lib.load(tiny_config().data)
  base = popular_baseline(tr.Y, te.Y)
  assert results["P@1"] > base["P@1"] + 0.1, (results["P@1"], base["P@1"])
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  for key in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "train_seconds", "examples_per_second",
              "num_params", "num_params_full_softmax", "config", "versions", "hash_spec"):
    assert key in saved
  assert saved["num_params"] == 4 * (1000 * 64 + 64 + 64 * 32 + 32)
  assert saved["hash_spec"] == {"family": "murmur", "K": 400, "B": 32, "R": 4, "seed": 0,
                                "input_dim": 0, "input_sign": True}
  assert set(saved["by_estimator"]) == set(tiny_config().eval.estimators)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  evals = [r for r in records if "eval/P@1" in r]
  # Periodic evaluations log every estimator they computed, the run's own without a prefix.
  assert evals and all(0 <= r["eval/log_mean/P@1"] <= 1 and "eval/mean/P@1" not in r
                       for r in evals)


def test_same_config_and_seed_give_same_numbers(tiny_run, tmp_path):
  workdir, results = tiny_run
  again = train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert _losses(workdir) == _losses(str(tmp_path))
  for k in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
    assert again[k] == results[k]


@pytest.mark.parametrize("clip_norm", [0.0, 0.01])
def test_repetitions_train_independently(clip_norm):
  setup, batches = tiny_setup((("data", 1), ("rep", 1)), R=4, clip_norm=clip_norm)
  p, state, batch = setup.parts, setup.state, jax.tree.map(jnp.asarray, batches[0])
  spec = p.spec
  step = jax.jit(lambda s, b: steps.train_step(s, b, model=p.model, tx=p.tx, spec=spec,
                                               loss="bce"))
  perturbed = state._replace(params=jax.tree.map(lambda x: x.at[0].multiply(3.0), state.params))
  a, ma = step(state, batch)
  b, mb = step(perturbed, batch)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x[1:], y[1:])  # Repetitions 1..R-1 never saw rep 0.
  assert not np.allclose(ma["loss"][0], mb["loss"][0])
  np.testing.assert_array_equal(ma["loss"][1:], mb["loss"][1:])
  assert ma["loss"].shape == (spec.R,)


@pytest.mark.parametrize("hidden, row_sparse", [((64,), False), ((512,), False),
                                                ((64, 32), True)])
def test_init_compiled_for_compile_time_gives_the_same_values(hidden, row_sparse):
  """init_state compiles at LLVM level 1 on CPU; the state must be bit-identical to the plain
  jit's (level 2), or runs would depend on where their initial state was compiled."""
  c = tiny_config()
  c.model.hidden = hidden
  c.optimizer.row_sparse = row_sparse
  train_set, _ = data_lib.load(c.data)
  setup = state_lib.create_train_state(c, train_set, total_steps=100)
  p, batch, mesh = setup.parts, setup.first_batch, setup.mesh
  fast = state_lib.init_state(p.model, p.tx, p.table_tx, jax.random.key(7), batch, mesh)
  plain_init = state_lib.INIT_CPU_COMPILER_OPTIONS
  try:
    state_lib.INIT_CPU_COMPILER_OPTIONS = None  # The default pipeline.
    plain = state_lib.init_state(p.model, p.tx, p.table_tx, jax.random.key(7), batch, mesh)
  finally:
    state_lib.INIT_CPU_COMPILER_OPTIONS = plain_init
  assert plain_init == {"xla_backend_optimization_level": 1}
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_train_step_is_donated_and_pure():
  setup, batches = tiny_setup((("data", 1), ("rep", 1)), R=4)
  state, step = setup.state, setup.train_step
  batch = setup.put(batches[0])
  copy = jax.tree.map(jnp.copy, state)
  s1, m1 = step(copy, batch)
  s2, m2 = step(jax.tree.map(jnp.copy, state), batch)
  np.testing.assert_array_equal(m1["loss"], m2["loss"])
  assert int(s1.step) == 1
  assert all(x.is_deleted() for x in jax.tree.leaves(copy.params))


def _counting(step: state_lib.CompiledStep, calls: list) -> None:
  """Record in ``calls`` which program each call of ``step`` runs."""
  step.compiled = {k: (lambda *a, f=f: calls.append("compiled") or f(*a))
                   for k, f in step.compiled.items()}
  step.jitted = lambda *a, f=step.jitted: calls.append("jitted") or f(*a)


def test_a_step_compiled_ahead_runs_its_program_and_matches_the_jitted_one(monkeypatch):
  """``TrainSetup.ahead``: the first batch's layout runs the program compiled before any
  state existed; another layout (a wider batch) falls back to the jitted step. Both give
  the jitted step's numbers. Freed host memory is handed back after each layout's first
  run only."""
  setup, batches = tiny_setup((("data", 1), ("rep", 1)), R=4, num_batches=2)
  ahead = setup.ahead().train_step
  assert isinstance(ahead, state_lib.CompiledStep) and len(ahead.compiled) == 1
  calls = []
  _counting(ahead, calls)
  monkeypatch.setattr(state_lib.host_memory, "release", lambda: calls.append("release"))
  state, jitted_state = (jax.tree.map(jnp.copy, setup.state) for _ in range(2))
  for b in batches:
    state, m = ahead(state, setup.put(b))
    jitted_state, jm = setup.train_step(jitted_state, setup.put(b))
    np.testing.assert_array_equal(m["loss"], jm["loss"])
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(jitted_state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, m = ahead(state, setup.put(batching.widened(batches[0])))
  assert calls == ["compiled", "release", "compiled", "jitted", "release"]
  assert np.isfinite(m["loss"]).all()


@pytest.mark.parametrize("data_shards, row_sparse", [(1, False), (2, False), (1, True)])
def test_a_long_run_compiles_the_next_wider_batch_ahead(data_shards, row_sparse):
  """A run of ``AHEAD_WIDER_STEPS`` steps or more also compiles, ahead, the layout of the
  next wider batch ``make_batch`` gives (one bucketed width up; with row-sparse Adam, of
  nonzeros and of touched rows, and of rows alone); a batch wider still falls back to the
  jitted step."""
  setup, _ = tiny_setup((("data", data_shards), ("rep", 8 // data_shards)), R=8,
                        row_sparse=row_sparse)
  first = setup.first_batch
  T = first["indices"].size // data_shards
  assert setup.ahead(state_lib.AHEAD_WIDER_STEPS - 1).train_step.compiled.keys() == {
      state_lib._layout(first)}
  ahead = setup.ahead(state_lib.AHEAD_WIDER_STEPS).train_step
  assert len(ahead.compiled) == (3 if row_sparse else 2)
  calls = []
  _counting(ahead, calls)
  # A batch one width up, as make_batch packs it: its first block holds the k longest
  # rows and the shortest, with k the fewest that take it past the floor T.
  c = setup.parts.config
  train_data, _ = data_lib.load(c.data)
  X, Y, b = train_data.X, train_data.Y, c.train.batch_size
  by_length = np.argsort(-np.diff(X.indptr), kind="stable")
  for k in range(b // data_shards):
    rows = np.concatenate([by_length[:k], by_length[::-1][:b - k]])
    if np.diff(X.indptr)[rows[:b // data_shards]].sum() > T:
      break
  wide = batching.make_batch(X, Y, rows, b, setup.widths, num_shards=data_shards)
  assert wide["indices"].size == batching.round_up_width(T + 1) * data_shards
  assert state_lib._layout(wide) == state_lib._layout(batching.widened(first, data_shards))
  state = jax.tree.map(jnp.copy, setup.state)
  state, _ = ahead(state, setup.put(wide))
  _, m = ahead(state, setup.put(batching.widened(wide, data_shards)))
  assert calls == ["compiled", "jitted"] and np.isfinite(m["loss"]).all()


def test_non_finite_loss_names_the_step(tmp_path):
  pending = [(7, np.ones(4)), (8, np.array([1.0, np.nan, 1.0, np.inf])), (9, np.full(4, np.nan))]
  with pytest.raises(loop.NonFiniteLossError, match=r"at step 8 in repetitions \[1, 3\]"):
    loop.check_finite(pending)
  c = tiny_config()
  c.optimizer.learning_rate = 1e30
  c.eval.every_epochs = 0
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss at step \d+"):
    train.train_and_evaluate(c, str(tmp_path))


def test_bibtex_short_run_beats_popularity(tmp_path):
  c = bibtex.get_config()
  c.data.train, c.data.test = shared_file("bibtex", "train"), shared_file("bibtex", "test")
  c.model.R = 4
  c.mesh = (("data", 1), ("rep", 1))
  c.train.update(num_epochs=2, progress_bar=False)
  results = train.train_and_evaluate(c, str(tmp_path))
  tr, te = data_lib.load(c.data)
  base = popular_baseline(tr.Y, te.Y)
  assert results["P@1"] > base["P@1"] + 0.2
  assert results["P@5"] > base["P@5"] + 0.05


def test_identity_hash_is_the_full_softmax_baseline(tmp_path):
  c = tiny_config()
  c.model.hash_family = "identity"
  c.train.num_epochs = 2
  c.eval.every_epochs = 0
  results = train.train_and_evaluate(c, str(tmp_path))
  assert results["hash_spec"] == {"family": "identity", "K": 400, "B": 400, "R": 1, "seed": 0,
                                  "input_dim": 0, "input_sign": True}
  assert results["num_params"] == results["num_params_full_softmax"]  # Same network.
  tr, te = data_lib.load(c.data)
  assert results["P@1"] > popular_baseline(tr.Y, te.Y)["P@1"] + 0.1


def test_reported_estimator_must_be_evaluated(tmp_path):
  c = tiny_config()
  c.eval.update(estimator="min", estimators=("mean", "log_mean"))
  with pytest.raises(ValueError, match="estimator='min' is not among"):
    train.train_and_evaluate(c, str(tmp_path))


def test_stops_when_a_periodic_evaluation_reaches_the_target(tmp_path):
  c = tiny_config()
  c.checkpoint.enabled = False
  c.eval.update(every_epochs=0, every_steps=10)
  c.train.update(target_metric="P@1", target_value=0.01)
  res = train.train_and_evaluate(c, str(tmp_path / "easy"))
  t = res["target"]
  assert t["reached"] and t["step"] == 10 and res["steps"] == 10 and t["achieved"] >= 0.01
  assert res["periodic_evals"] == 1 and t["periodic_eval_seconds"] > 0
  assert 0 < res["first_step_seconds"] <= t["train_seconds"] <= res["train_seconds"]
  c.train.target_value = 1.01  # Unreachable: trains every epoch, evaluating every 10 steps.
  res = train.train_and_evaluate(c, str(tmp_path / "hard"))
  steps = 3 * -(-3000 // 64)
  assert not res["target"]["reached"] and res["steps"] == steps
  assert res["periodic_evals"] == steps // 10


def test_a_run_that_reached_its_target_stops_there_when_it_resumes(tmp_path):
  """The target reached is saved with the checkpoint: the same command run again (as after a
  kill during the export) resumes at that step and stops, instead of training on."""
  c = tiny_config()
  c.eval.update(every_epochs=0, every_steps=10)
  c.train.update(target_metric="P@1", target_value=0.01)
  first = train.train_and_evaluate(c, str(tmp_path))
  again = train.train_and_evaluate(c, str(tmp_path))
  assert first["target"]["reached"] and first["steps"] == 10
  assert again["steps"] == 10 and again["target"] == first["target"]
  assert again["P@1"] == first["P@1"]
  c.train.target_value = 1.01  # Another target: the run goes on from its checkpoint.
  assert train.train_and_evaluate(c, str(tmp_path))["steps"] == 3 * -(-3000 // 64)


def test_target_without_periodic_evaluations_is_an_error(tmp_path):
  c = tiny_config()
  c.eval.every_epochs = 0
  c.train.update(target_metric="P@1", target_value=0.5)
  with pytest.raises(ValueError, match="needs periodic evaluations"):
    train.train_and_evaluate(c, str(tmp_path))


def test_init_from_a_model_folder_starts_from_its_parameters(tmp_path):
  """A run started from a model folder (train.init_from) begins at its parameters: with a
  learning rate of 0 it exports them unchanged, bit for bit. A folder of another model is
  refused before training."""
  from mach_jax import bundle
  c = tiny_config()
  c.train.num_epochs = 1
  train.train_and_evaluate(c, str(tmp_path / "first"))
  folder = str(tmp_path / "first" / "model")
  c.train.init_from = folder
  c.optimizer.learning_rate = 0.0
  train.train_and_evaluate(c, str(tmp_path / "second"))
  a = flat(bundle.load(folder)[2])
  b = flat(bundle.load(str(tmp_path / "second" / "model"))[2])
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
  c.model.B = 64
  with pytest.raises(ValueError, match=r"cannot start this run.*model.B=64"):
    train.train_and_evaluate(c, str(tmp_path / "third"))
