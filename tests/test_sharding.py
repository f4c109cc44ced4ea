"""Each device owns whole repetitions: collective counts, equivalence, mesh errors.

Runs on 8 simulated CPU devices (tests/conftest.py).
"""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from mach_jax import sharding, train
from tests.helpers import flat as _flat, run_steps, shared_file, tiny_setup

R = 8


# The repetition-local variants of the input layer: each must stay collective-free.
INPUT_VARIANTS = [{}, {"input_dim": 256}, {"input_dim": 256, "row_sparse": True},
                  {"input_dim": 256, "row_sparse": True, "input_dropout": 0.25,
                   "hidden_dropout": 0.25}]
INPUT_IDS = ["plain", "input_hash", "input_hash+row_sparse", "input_hash+row_sparse+dropout"]


def _compiled_step(mesh_spec, clip_global=False, **kwargs):
  setup, batches = tiny_setup(mesh_spec, R, **kwargs)
  state, mesh = setup.state, setup.mesh
  gbatch = setup.put(batches[0])
  if clip_global:
    # The variant the design forbids: one clip over ALL parameters couples the repetitions.
    clip = optax.clip_by_global_norm(1.0)
    fn = jax.jit(lambda g: clip.update(g, clip.init(g))[0])
    return fn.lower(state.params).compile().as_text(), mesh
  return (setup.train_step.lower(state, gbatch).compile().as_text(),
          setup.logits_fn.lower(state.params, gbatch).compile().as_text(), mesh)


def assert_no_collectives(hlo: str):
  found = sharding.collectives(hlo)
  assert not found, f"the compiled step contains collectives: {found}"


@pytest.mark.parametrize("kwargs", INPUT_VARIANTS, ids=INPUT_IDS)
def test_collective_free_train_and_eval_on_rep_mesh(kwargs):
  step_hlo, eval_hlo, _ = _compiled_step((("data", 1), ("rep", 8)), **kwargs)
  assert_no_collectives(step_hlo)
  assert_no_collectives(eval_hlo)


def test_collective_check_catches_a_global_norm_clip():
  hlo, _ = _compiled_step((("data", 1), ("rep", 8)), clip_global=True)
  with pytest.raises(AssertionError, match="all-reduce"):
    assert_no_collectives(hlo)


def test_collectives_on_data_rep_mesh_are_all_reduces_within_data_groups():
  step_hlo, eval_hlo, mesh = _compiled_step((("data", 2), ("rep", 4)))
  found = sharding.collectives(step_hlo)
  assert set(found) == {"all-reduce"}, found
  groups_seen = set()
  for line in step_hlo.splitlines():
    if " all-reduce(" in line or " all-reduce-start(" in line:
      m = re.search(r"replica_groups=\{(\{[\d,]+\}(?:,\{[\d,]+\})*)\}", line)
      assert m, f"unparsed replica groups: {line[:200]}"
      groups_seen |= {tuple(sorted(map(int, g.split(","))))
                      for g in re.findall(r"\{([\d,]+)\}", m.group(1))}
  ids = np.vectorize(lambda d: d.id)(mesh.devices)  # [data, rep]
  data_groups = {tuple(sorted(ids[:, r])) for r in range(ids.shape[1])}
  assert groups_seen == data_groups
  assert_no_collectives(eval_hlo)  # Logits stay sharded; only [R, b, B] is gathered later.


@pytest.mark.parametrize("kwargs", INPUT_VARIANTS, ids=INPUT_IDS)
def test_rep_sharded_steps_match_single_device(kwargs):
  single = _flat(run_steps((("data", 1), ("rep", 1)), **kwargs))
  sharded = _flat(run_steps((("data", 1), ("rep", 8)), **kwargs))
  # Not bitwise: XLA:CPU picks its GEMM kernel by shape, and a device holding 1 repetition
  # multiplies [1, b, D] x [1, D, H] where one device holding 8 multiplies [8, b, D] x
  # [8, D, H]; the sums round differently in the last bit (seen: |diff| <= 1e-7 after 3 steps).
  # With the input hash, signed colliding features cancel within a table row, and Adam
  # divides such a row's near-zero gradient (~eps = 1e-8) by its own root, which magnifies
  # that rounding (seen: |diff| <= 2.6e-6 after 3 steps, 0.3% of one step of lr 1e-3).
  atol = 1e-5 if kwargs.get("input_dim") else 1e-6
  for k in single:
    np.testing.assert_allclose(single[k], sharded[k], rtol=1e-5, atol=atol, err_msg=k)


def test_data_parallel_steps_match_single_device():
  single = _flat(run_steps((("data", 1), ("rep", 1))))
  both = _flat(run_steps((("data", 2), ("rep", 4))))
  # Summing the gradient over two halves of the batch reorders float additions: equal to
  # float32 rounding, not bitwise.
  for k in single:
    np.testing.assert_allclose(single[k], both[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("mesh_spec, R, batch, match", [
    ((("data", 1), ("rep", -1)), 12, 64, r"R=12 is not divisible by the 'rep' mesh size 8"),
    ((("data", 1), ("rep", 16)), 16, 64, r"needs 16 devices but only 8"),
    ((("data", 3), ("rep", -1)), 8, 64, r"not a multiple"),
    ((("data", 2), ("rep", 4)), 8, 63, r"batch_size=63 is not divisible by the 'data'"),
    ((("batch", 1), ("rep", -1)), 8, 64, r"name exactly the axes"),
    ((("data", -1), ("rep", -1)), 8, 64, r"at most one -1"),
])
def test_bad_mesh_configs_fail_at_start_up(mesh_spec, R, batch, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(mesh_spec, R, batch)


def test_start_up_check_reports_per_device_repetitions():
  setup, _ = tiny_setup((("data", 1), ("rep", 4)), R)
  mesh, state = setup.mesh, setup.state
  line = sharding.check_state_sharding(mesh, state, R)
  assert "each device holds 2 repetitions" in line
  replicated = jax.tree.map(lambda x: jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec())), state)
  with pytest.raises(AssertionError, match="expected"):
    sharding.check_state_sharding(mesh, replicated, R)


def test_start_up_check_is_independent_of_the_partition_rules():
  """Rules that replicate everything produce a state the check refuses: it derives the
  expected layout from the shapes (leading axis = R), not from the rules."""
  setup, _ = tiny_setup((("data", 1), ("rep", 4)), R)
  wrong_rules = ((r".*", jax.sharding.PartitionSpec()),)
  specs = sharding.partition_specs(setup.state, wrong_rules)
  placed = jax.tree.map(lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(setup.mesh, s)),
                        setup.state, specs, is_leaf=lambda x: isinstance(x, jax.Array))
  with pytest.raises(AssertionError, match="expected"):
    sharding.check_state_sharding(setup.mesh, placed, R)
  with pytest.raises(AssertionError, match="no leading repetition axis"):
    sharding.check_state_sharding(setup.mesh, setup.state, R + 1)


def test_partition_rules_split_every_leaf_but_the_step_on_rep():
  setup, _ = tiny_setup((("data", 1), ("rep", 4)), R, row_sparse=True)
  specs = sharding.partition_specs(setup.state)
  assert specs.step == jax.sharding.PartitionSpec()
  others = jax.tree.leaves((specs.params, specs.opt_state, specs.table_opt_state),
                           is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert others and all(s == jax.sharding.PartitionSpec("rep") for s in others)


def test_two_processes_equal_one(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = str(tmp_path / "params.npz")
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(root, "tests", "sharding_run.py"), "--process_id", str(i),
       "--num_processes", "2", "--port", str(port), "--local_devices", "2", "--out", out],
      env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  logs = [p.communicate(timeout=240)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  got = np.load(out)
  # The same layout in one process (4 devices, 2 repetitions each): bitwise equal.
  one_process = _flat(run_steps((("data", 1), ("rep", 4))))
  single = _flat(run_steps((("data", 1), ("rep", 1))))
  assert set(got.files) == set(one_process)
  for k in one_process:
    np.testing.assert_array_equal(got[k], one_process[k], err_msg=k)
    np.testing.assert_allclose(got[k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_bibtex_sharded_equals_single_device(tmp_path):
  from experiments.configs import bibtex
  results = []
  for rep in (1, 8):
    c = bibtex.get_config()
    c.data.train, c.data.test = shared_file("bibtex", "train"), shared_file("bibtex", "test")
    c.model.R = 8
    c.mesh = (("data", 1), ("rep", rep))
    c.train.update(num_epochs=1, progress_bar=False)
    c.eval.estimators = ("mean", "log_mean")
    results.append(train.train_and_evaluate(c, str(tmp_path / f"rep{rep}")))
  for k in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
    assert results[0][k] == results[1][k], k


def test_a_two_process_refit_killed_with_its_best_checkpoint_damaged_resumes_exactly(tmp_path):
  """Two processes (2 devices each, the repetitions across both) as on two hosts, running
  the default text config's protocol (a selection with a decay, then the refit). Process 0
  is killed after the selection's last epoch and the best evaluation's checkpoint, which
  the selection goes back to at its end, is damaged. The survivor exits by itself; every
  process must agree to pass over the damaged checkpoint and rerun from before it
  (``checkpoint.restore_kept``, then ``experiments.train``'s rerun within the process),
  ending bit-identical to the uninterrupted run: parameters, test metrics and the logs of
  the selection and the refit. (The campaigns: ``python -m experiments.bench.faults
  --processes 2``, with and without ``--refit``.)"""
  from experiments.bench import faults
  flags = faults.FLAGS + faults.REFIT_FLAGS
  ref_dir, workdir = str(tmp_path / "reference"), str(tmp_path / "killed")
  rc, log = faults.finish(faults.launch(ref_dir, flags, processes=2))
  assert rc == 0, log[-3000:]
  reference = json.load(open(os.path.join(ref_dir, "results.json")))
  assert reference["refit"]["decays"], reference["refit"]
  selection = json.load(open(os.path.join(ref_dir, "select", "results.json")))
  row = faults.trial(workdir, "damage_best", 0, selection["steps"], flags, processes=2,
                     victim=0, survivor_wait=60)
  assert row["rerun_rc"] == 0 and row["passed_over"], row
  assert row["survivors_hung"] == 0 and row["resumed"], row
  assert faults.compare(workdir, reference, faults.params(ref_dir), faults.logs(ref_dir)) == {
      "metrics_equal": True, "params_equal": True, "log_equal": True}


def test_a_whole_run_as_two_processes_equals_one_process_of_as_many_devices(tmp_path, monkeypatch):
  """The training command, evaluations, checkpoints and export included, as one process of
  2 devices and as two processes of 1 device (2 repetitions a device either way): every
  checkpoint's state and the model folder bit for bit equal, and the same test metrics
  (``experiments.bench.topologies``, whose comparison must also see a change of one value)."""
  from experiments.bench import faults, topologies
  flags = [f for f in faults.FLAGS if not f.startswith("--config.mesh=")] + [
      "--config.mesh=(('data', 1), ('rep', -1))", "--config.train.num_epochs=1"]
  monkeypatch.setattr("sys.argv", ["topologies", "--out", str(tmp_path), "--layouts",
                                   "1x2,2x1", "--", *flags])
  topologies.main()
  report = json.load(open(tmp_path / "topologies.json"))["layouts"]["2x1"]
  assert len(report["steps"]) >= 4 and report["first_step_differing"] is None, report
  assert report["model"] == {"bitwise": True, "max_abs": 0.0, "leaves": []}
  assert all(a == b and a is not None for a, b in report["metrics"].values()), report
  state = topologies.checkpoint_state(str(tmp_path / "2x1"), report["steps"][-1])
  assert {k for k in state if "opt_state" in k} and {k for k in state if "params" in k}
  changed = {k: v.copy() for k, v in state.items()}
  key = next(k for k in changed if "kernel" in k and "params" in k)
  changed[key].flat[7] += 2.0**-20
  assert topologies.difference(state, changed)["leaves"] == [key]
