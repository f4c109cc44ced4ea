"""Checkpoint store: exact resume after SIGKILL, restore onto other device counts, damaged
checkpoints, keep policy, and the exported model folder / Predictor / predict CLI."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mach_jax import checkpoint, restore, resume, train
from mach_jax.predictor import Predictor
from tests.helpers import shared_file, tiny_config, tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = [
    "--config", "experiments/configs/synthetic.py",
    "--config.data.synthetic.num_train=3000", "--config.data.synthetic.num_test=300",
    "--config.data.synthetic.num_classes=400", "--config.data.synthetic.num_features=1000",
    "--config.model.R=4", "--config.model.B=32", "--config.model.hidden=(64,)",
    "--config.train.batch_size=64", "--config.train.num_epochs=8",
    "--config.train.progress_bar=False", "--config.checkpoint.every_steps=10",
    "--config.mesh=(('data', 1), ('rep', 1))", "--config.eval.estimators=('mean',)",
]


def _launch(workdir):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen([sys.executable, "-m", "experiments.train", *TINY_FLAGS,
                           "--workdir", str(workdir)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finalised_steps(workdir):
  d = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _params(workdir):
  p = Predictor.load(os.path.join(workdir, "model"))
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(p.params)}


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  proc = _launch(killed)
  deadline = time.time() + 240
  while not _finalised_steps(killed) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "training ended before a checkpoint could be interrupted"
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not (killed / "results.json").exists()
  first = _finalised_steps(killed)
  assert first and first[-1] < 8 * 47

  resumed = _launch(killed)
  log = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, log[-3000:]
  assert "resumed from" in log
  full = _launch(clean)
  log2 = full.communicate(timeout=300)[0]
  assert full.returncode == 0, log2[-3000:]
  a, b = _params(killed), _params(clean)
  for k in b:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # Bitwise on CPU.
  ra = json.load(open(killed / "results.json"))
  rb = json.load(open(clean / "results.json"))
  for k in ("P@1", "P@3", "P@5", "nDCG@5"):
    assert ra[k] == rb[k]
  assert ra["steps"] == rb["steps"] == 8 * 47
  assert ra["bundle_bytes"] < ra["checkpoint_bytes"]  # No optimizer state in the bundle.


def _state_on(mesh_spec, R=8, steps=2):
  setup, batches = tiny_setup(mesh_spec, R, steps + 1)
  state = setup.state
  for b in batches[:steps]:
    state, _ = setup.run(state, b)
  return state, setup.run, batches[steps], setup.mesh


@pytest.mark.parametrize("src, dst", [(8, 1), (1, 4), (8, 2)])
def test_restore_onto_another_device_count_then_train(tmp_path, src, dst):
  state, _, _, _ = _state_on((("data", 1), ("rep", src)))
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, 2, state, {"step": 2})
  manager.wait_until_finished()
  fresh, run, next_batch, mesh = _state_on((("data", 1), ("rep", dst)), steps=0)
  restored = checkpoint.restore_latest(checkpoint.make_manager(str(tmp_path)),
                                       checkpoint.abstract_like(fresh))
  assert restored.step == 2 and restored.meta == {"step": 2}
  assert jax.tree.structure(restored.state) == jax.tree.structure(fresh)
  for x, y in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, f in zip(jax.tree.leaves(restored.state), jax.tree.leaves(fresh)):
    assert x.sharding.is_equivalent_to(f.sharding, x.ndim)
  assert len(restored.state.params["reps"]["embedding"].sharding.device_set) == dst
  after, metrics = run(restored.state, next_batch)
  assert int(after.step) == 3 and np.isfinite(np.asarray(metrics["loss"])).all()


def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path):
  state, run, batch, _ = _state_on((("data", 1), ("rep", 1)), R=4, steps=1)
  manager = checkpoint.make_manager(str(tmp_path), keep=5)
  checkpoint.save(manager, 1, state, {"step": 1})
  later, _ = run(jax.tree.map(lambda x: x.copy(), state), batch)
  checkpoint.save(manager, 2, later, {"step": 2})
  manager.wait_until_finished()
  step2 = tmp_path / checkpoint.CHECKPOINT_DIR / "2"
  files = [os.path.join(d, f) for d, _, fs in os.walk(step2 / "state") for f in fs]
  for f in files:  # Truncate every data file of the newest checkpoint.
    if os.path.getsize(f) > 1000:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 3)
  with pytest.warns(RuntimeWarning, match=r"checkpoints/2 could not be restored"):
    restored = checkpoint.restore_latest(checkpoint.make_manager(str(tmp_path), keep=5),
                                         checkpoint.abstract_like(state))
  assert restored.step == 1
  for x, y in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Reported and set aside, not deleted: the run can save step 2 again.
  assert not step2.exists() and (tmp_path / checkpoint.CHECKPOINT_DIR / "2.damaged").exists()
  manager = checkpoint.make_manager(str(tmp_path), keep=5)
  checkpoint.save(manager, 2, later, {"step": 2})
  assert checkpoint.restore_latest(manager, checkpoint.abstract_like(state)).step == 2


def test_a_damaged_best_checkpoint_is_trained_again_with_the_same_numbers(tmp_path):
  """The checkpoint of the best validation evaluation, which the run goes back to at its
  end, damaged after it was saved: the run cannot restore it, moves it and the newer
  checkpoints aside, and (``experiments.train``) runs again from the checkpoint before it,
  training the lost steps again. The model is bit-identical to the undamaged run's."""
  flags = ["--config.data.validation_fraction=0.1", "--config.checkpoint.best_metric=P@1",
           "--config.checkpoint.keep=10", "--config.train.num_epochs=6",
           "--config.optimizer.learning_rate=0.03",
           "--config.eval.every_epochs=1"]
  def launch():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "experiments.train", *TINY_FLAGS, *flags,
                           "--workdir", str(tmp_path)], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
  first = launch()
  assert first.returncode == 0, first.stdout[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  best, last = results["selected"]["step"], results["steps"]
  assert best < last, (best, last)  # Else the run never goes back to a checkpoint.
  before = _params(tmp_path)
  folder = tmp_path / checkpoint.CHECKPOINT_DIR / str(best)
  big = max((os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs),
            key=os.path.getsize)
  data = bytearray(open(big, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(big, "wb").write(bytes(data))
  again = launch()  # Resumes finished, goes back to the damaged best: lost, run once more.
  assert again.returncode == 0, again.stdout[-3000:]
  assert re.search(rf"checkpoints/{best}, the state this run goes back to, could not be "
                   rf"read \(DamagedFolderError: .*{re.escape(os.path.basename(big))}.*"
                   r"Rerunning", again.stdout), again.stdout[-3000:]
  assert "taking over the lock" not in again.stdout  # The same process, not a killed one.
  assert (tmp_path / checkpoint.CHECKPOINT_DIR / f"{best}.damaged").is_dir()
  assert (tmp_path / checkpoint.CHECKPOINT_DIR / f"{last}.superseded").is_dir()
  assert _finalised_steps(tmp_path)[-1] == last  # Trained to the end again.
  rerun = json.loads((tmp_path / "results.json").read_text())
  assert rerun["selected"] == results["selected"]
  assert {k: rerun[k] for k in ("P@1", "P@5")} == {k: results[k] for k in ("P@1", "P@5")}
  after = _params(tmp_path)
  assert before.keys() == after.keys()
  for k in before:
    np.testing.assert_array_equal(before[k], after[k], err_msg=k)


@pytest.mark.parametrize("recorded", ["at_once", "in_the_background", "no"])
def test_a_flipped_bit_in_a_checkpoint_is_caught_by_its_files_record(tmp_path, recorded):
  """One bit of the newest checkpoint's array data flipped: orbax reads it back as another
  value without an error; the files' record a save leaves catches it, naming the file, and
  the previous checkpoint is restored. A save in the background (accelerators' default)
  gets its record before orbax renames its folder into place: no finished checkpoint lacks
  it, even before the run waits for the save. A checkpoint without the record (an older
  version's) is read as it is."""
  state, run, batch, _ = _state_on((("data", 1), ("rep", 1)), R=4, steps=1)
  manager = checkpoint.make_manager(  # As on an accelerator (orbax saves async on CPU too).
      str(tmp_path), keep=5, background="always" if recorded == "in_the_background" else "auto")
  background = manager._options.enable_async_checkpointing  # noqa: SLF001
  assert background == (recorded == "in_the_background")
  checkpoint.save(manager, 1, state, {"step": 1})
  later, _ = run(jax.tree.map(lambda x: x.copy(), state), batch)
  checkpoint.save(manager, 2, later, {"step": 2})
  step1, step2 = (tmp_path / checkpoint.CHECKPOINT_DIR / str(i) for i in (1, 2))
  assert (step1 / checkpoint.DIGESTS_FILE).exists()
  deadline = time.time() + 60
  while background and not step2.exists() and time.time() < deadline:
    time.sleep(0.001)
  assert step2.exists() and (step2 / checkpoint.DIGESTS_FILE).exists()  # Not yet waited for.
  checkpoint.finish(manager)
  assert (step2 / checkpoint.DIGESTS_FILE).exists()
  if recorded == "no":
    (step2 / checkpoint.DIGESTS_FILE).unlink()
  big = max((os.path.join(d, f) for d, _, fs in os.walk(step2) for f in fs),
            key=os.path.getsize)
  data = bytearray(open(big, "rb").read())
  data[len(data) // 2] ^= 0x40
  open(big, "wb").write(bytes(data))
  target = checkpoint.abstract_like(state)
  if recorded == "no":
    got = checkpoint.restore_latest(checkpoint.make_manager(str(tmp_path), keep=5), target)
    assert got.step == 2 and any(  # Another value, and no error.
        not np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(got.state), jax.tree.leaves(later)))
    return
  name = os.path.relpath(big, step2)
  with pytest.warns(RuntimeWarning, match=rf"checkpoints/2 could not be restored "
                    rf"\(DamagedFolderError: .*{re.escape(name)}: its crc32 digest differs"):
    got = checkpoint.restore_latest(checkpoint.make_manager(str(tmp_path), keep=5), target)
  assert got.step == 1
  for x, y in zip(jax.tree.leaves(got.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_save_without_its_record_is_read_unchecked(tmp_path):
  state, _, _, _ = _state_on((("data", 1), ("rep", 1)), R=4, steps=1)
  manager = checkpoint.make_manager(str(tmp_path), keep=5)
  checkpoint.save(manager, 1, state, {"step": 1}, record_files=False)
  folder = tmp_path / checkpoint.CHECKPOINT_DIR / "1"
  assert folder.is_dir() and not (folder / checkpoint.DIGESTS_FILE).exists()
  checkpoint.check_files(manager, 1)  # Nothing recorded: nothing to refuse.
  (folder / checkpoint.DIGESTS_FILE).write_text("{not json")
  with pytest.raises(ValueError, match=r"file_digests.json: "):
    checkpoint.check_files(manager, 1)


def _meta(step, best_step):
  return {"step": step, "best": {"step": best_step}}


def test_keep_last_k_and_best(tmp_path):
  state, _, _, _ = _state_on((("data", 1), ("rep", 1)), R=4, steps=0)
  manager = checkpoint.make_manager(str(tmp_path), keep=2, keep_best=True)
  for step, best in [(1, 1), (2, 2), (3, 2), (4, 2), (5, 2)]:
    checkpoint.save(manager, step, state, _meta(step, best))
    manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [2, 4, 5]  # Best and the last two.


def test_the_best_checkpoint_survives_a_restart(tmp_path):
  """A resumed run's manager knows nothing of the checkpoints before it; the best step
  (named by the restored meta) must still be kept while newer, worse ones are saved."""
  state, _, _, _ = _state_on((("data", 1), ("rep", 1)), R=4, steps=0)
  manager = checkpoint.make_manager(str(tmp_path), keep=1, keep_best=True)
  checkpoint.save(manager, 1, state, _meta(1, 1))
  manager.wait_until_finished()
  manager = checkpoint.make_manager(str(tmp_path), keep=1, keep_best=True)  # A restart.
  for step in (2, 3, 4):
    checkpoint.save(manager, step, state, _meta(step, 1))
    manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [1, 4]


def test_changed_config_is_not_resumed(tmp_path):
  c = tiny_config()
  c.train.num_epochs = 1
  train.train_and_evaluate(c, str(tmp_path))
  c.model.B = 64
  with pytest.raises(ValueError, match="hash spec"):
    train.train_and_evaluate(c, str(tmp_path))


def test_a_finished_constant_rate_run_continues_for_more_epochs(tmp_path):
  """Under a constant learning rate a finished run rerun with a larger epoch cap goes on
  from its last checkpoint and ends where one run with that cap ends (bitwise on CPU); a
  cosine schedule, which depends on the run's length, is refused."""
  c = tiny_config()
  c.train.num_epochs = 1
  c.eval.every_epochs = 0
  c.checkpoint.every_steps = 1000
  train.train_and_evaluate(c, str(tmp_path / "continued"))
  c.train.num_epochs = 2
  train.train_and_evaluate(c, str(tmp_path / "continued"))
  train.train_and_evaluate(c, str(tmp_path / "clean"))
  a, b = _params(tmp_path / "continued"), _params(tmp_path / "clean")
  for k in b:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  ra = json.load(open(tmp_path / "continued" / "results.json"))
  assert ra["steps"] == json.load(open(tmp_path / "clean" / "results.json"))["steps"]

  c.optimizer.update(schedule="cosine", warmup_steps=2)
  c.train.num_epochs = 1
  train.train_and_evaluate(c, str(tmp_path / "cosine"))
  c.train.num_epochs = 2
  with pytest.raises(ValueError, match="num_epochs differs.*cosine schedule depends on it"):
    train.train_and_evaluate(c, str(tmp_path / "cosine"))


def test_a_field_added_since_the_checkpoint_counts_as_its_default():
  """A checkpoint written before a config field existed resumes when the run leaves that
  field at its default, and is refused when the run changes it."""
  from mach_jax import config as config_lib
  c = config_lib.resolve(tiny_config(), 400, 1.0, 1000)
  spec = config_lib.hash_spec(c, 400)
  meta = resume.run_meta(step=1, epoch=0, batch_in_epoch=1, steps_per_epoch=10,
                         train_seconds=1.0, examples=64, spec=spec, config=c)
  del meta["config"]["model"]["table_dtype"], meta["config"]["data"]["featurizer"]["idf"]
  resume.check_resumable(meta, spec, c, "w")
  c.model.table_dtype = "bfloat16"
  with pytest.raises(ValueError, match="config.model differs"):
    resume.check_resumable(meta, spec, c, "w")


def test_predictor_checks_feature_dimension(tmp_path):
  c = tiny_config()
  c.train.num_epochs = 1
  train.train_and_evaluate(c, str(tmp_path))
  p = Predictor.load(str(tmp_path / "model"))
  import scipy.sparse as sp
  with pytest.raises(ValueError, match="expects 1000"):
    p.predict_topk(sp.csr_matrix((2, 999), dtype=np.float32))
  with pytest.raises(FileNotFoundError, match="not a model folder"):
    Predictor.load(str(tmp_path))


def test_predict_cli_reproduces_results_on_bibtex(tmp_path):
  from experiments.configs import bibtex
  c = bibtex.get_config()
  c.data.train, test = shared_file("bibtex", "train"), shared_file("bibtex", "test")
  c.data.test = test
  c.model.R = 4
  c.mesh = (("data", 1), ("rep", 1))
  c.train.update(num_epochs=2, progress_bar=False)
  c.eval.update(estimator="mean", estimators=("mean",))
  results = train.train_and_evaluate(c, str(tmp_path))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-m", "experiments.predict", "--workdir", str(tmp_path),
                        "--input", test, "--k", "5", "--output", str(tmp_path / "preds.txt")],
                       cwd=ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [l for l in out.stdout.splitlines() if l.startswith("P@1")][0]
  got = dict(zip(line.split()[::2], map(float, line.split()[1::2])))
  for k in ("P@1", "P@3", "P@5", "nDCG@5"):
    assert got[k] == pytest.approx(results[k], abs=5e-5)
  lines = (tmp_path / "preds.txt").read_text().splitlines()
  assert len(lines) == 2515
  first = [tuple(t.split(":")) for t in lines[0].split()]
  assert len(first) == 5 and all(0 <= int(l) < 159 for l, _ in first)
  scores = [float(s) for _, s in first]
  assert scores == sorted(scores, reverse=True)


def test_saves_are_synchronous_on_cpu(tmp_path):
  """On CPU a background save would hold a second copy of the state (see async_saves)."""
  assert jax.devices()[0].platform == "cpu" and not checkpoint.async_saves()
  assert checkpoint.async_saves("always") and not checkpoint.async_saves("never")
  with pytest.raises(ValueError, match="checkpoint.background='sometimes'"):
    checkpoint.async_saves("sometimes")
  manager = checkpoint.make_manager(str(tmp_path))
  assert not manager._options.enable_async_checkpointing  # noqa: SLF001


def _disk_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_checkpoints_are_written_uncompressed(tmp_path):
  """A compressing save holds encoded chunk copies in memory (arrays_handler): 4 MiB of zeros
  would take a few KB compressed, so anything less than 4 MiB on disk means compression."""
  manager = checkpoint.make_manager(str(tmp_path))
  state = {"w": jax.numpy.zeros((1024, 1024), jax.numpy.float32)}
  checkpoint.save(manager, 1, state, {"step": 1})
  assert _disk_bytes(tmp_path / checkpoint.CHECKPOINT_DIR / "1" / "state") >= 4 * 2**20
  back = checkpoint.restore_latest(manager, checkpoint.abstract_like(state))
  np.testing.assert_array_equal(back.state["w"], state["w"])


def _save_compressed(workdir, step, state):
  """A checkpoint as earlier versions wrote it: orbax's default (zstd) StandardSave."""
  import orbax.checkpoint as ocp
  old = ocp.CheckpointManager(str(workdir / checkpoint.CHECKPOINT_DIR),
                              options=ocp.CheckpointManagerOptions(create=True),
                              item_names=("state", "meta"))
  old.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         meta=ocp.args.JsonSave({"step": step})))
  old.wait_until_finished()


def test_a_compressed_checkpoint_of_an_earlier_version_restores(tmp_path):
  """Checkpoints written with orbax's default (zstd-compressed) StandardSave still resume."""
  state = {"w": jax.random.normal(jax.random.key(0), (64, 32)), "step": jax.numpy.int32(7)}
  _save_compressed(tmp_path, 3, state)
  back = checkpoint.restore_latest(checkpoint.make_manager(str(tmp_path)),
                                   checkpoint.abstract_like(state))
  assert back.step == 3 and back.meta == {"step": 3}
  np.testing.assert_array_equal(back.state["w"], state["w"])
  assert int(back.state["step"]) == 7


def _state(seed=0):
  """A TrainState with a table of many pieces (see ``pieces``), a bfloat16 leaf and a scalar."""
  from mach_jax.state import TrainState
  k = jax.random.split(jax.random.key(seed), 2)
  return TrainState(step=jax.numpy.int32(seed + 3),
                    params={"table": jax.random.normal(k[0], (40, 30, 16)),
                            "out": jax.random.normal(k[1], (4, 16, 8)).astype(jax.numpy.bfloat16)},
                    opt_state=({"mu": jax.numpy.full((4, 7), float(seed))},),
                    table_opt_state=None)


@pytest.fixture(params=[4096, 1024])
def pieces(monkeypatch, request):
  """Small pieces: the table moves in many, as a real table of GBs would; of 4 KiB, two
  [30, 16] rows of its first axis each; of 1 KiB, 16 rows of its second axis (a row of
  the first axis is larger than a piece)."""
  from mach_jax import array_store
  monkeypatch.setattr(array_store, "PIECE_BYTES", request.param)
  blocks = array_store._pieces((40, 30, 16), 4)  # noqa: SLF001
  assert len(blocks) == {4096: 20, 1024: 80}[request.param]
  assert blocks[1] == {4096: ((2, 0, 0), (2, 30, 16)), 1024: ((0, 16, 0), (1, 14, 16))}[
      request.param]


def _equal(a, b):
  return jax.tree.all(jax.tree.map(lambda x, y: x.shape == y.shape and x.dtype == y.dtype
                                   and bool((np.asarray(x) == np.asarray(y)).all()), a, b))


def test_restore_in_place_reads_a_checkpoint_into_the_given_arrays(tmp_path, pieces):
  manager = checkpoint.make_manager(str(tmp_path))
  saved = _state(0)
  checkpoint.save(manager, 3, saved, {"step": 3})
  current = _state(1)  # The state a run holds when it goes back: other values, same layout.
  back = checkpoint.restore_in_place(manager, 3, current)
  assert _equal(back, saved)
  assert current.params["table"].is_deleted()  # Its buffer was written, not a new one.
  # Only the parameters, into fresh arrays (the end of a run, its optimizer state freed).
  fresh = checkpoint.abstract_like(_state(1))
  back = checkpoint.restore_in_place(manager, 3, fresh, fields=("params",))
  assert _equal(back.params, saved.params) and back.opt_state == fresh.opt_state


def test_a_resuming_run_reads_its_state_in_place(tmp_path, pieces, monkeypatch):
  """``restore_latest`` onto an abstract ``TrainState`` on one device (what a resuming run
  passes) reads it in pieces into arrays it allocates, with the target's shardings;
  ``in_place=False``, or a target of concrete arrays (which must not be overwritten), reads
  it whole."""
  manager = checkpoint.make_manager(str(tmp_path))
  saved = _state(0)
  checkpoint.save(manager, 3, saved, {"step": 3})
  calls = []
  read = restore.read_in_place
  monkeypatch.setattr(restore, "read_in_place", lambda *a: calls.append(1) or read(*a))
  target = checkpoint.abstract_like(_state(1))
  back = checkpoint.restore_latest(manager, target)
  assert calls and back.step == 3 and back.meta == {"step": 3} and _equal(back.state, saved)
  assert back.state.params["table"].sharding == target.params["table"].sharding
  calls.clear()
  whole = checkpoint.restore_latest(manager, target, in_place=False)
  concrete = _state(1)
  given = checkpoint.restore_latest(manager, concrete)
  assert not calls and _equal(whole.state, saved) and _equal(given.state, saved)
  assert not concrete.params["table"].is_deleted()


def test_restore_in_place_refuses_a_different_layout_before_writing(tmp_path, pieces):
  """A shape that differs from the checkpoint's is refused naming the array and both
  layouts, before orbax reads anything; the given arrays are left as they were."""
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, 3, _state(0), {"step": 3})
  other = _state(1)._replace(opt_state=({"mu": jax.numpy.ones((4, 8))},))
  with pytest.raises(RuntimeError, match=r"could not be restored .*'opt_state.0.mu' of .* is "
                     r"float32\[4, 7\], not float32\[4, 8\]"):
    with pytest.warns(RuntimeWarning):
      checkpoint.restore_in_place(manager, 3, other)
  assert not other.params["table"].is_deleted()


def test_restore_in_place_restores_a_sharded_state_whole(tmp_path, pieces):
  """Arrays over several devices are not read chunk by chunk: the whole-state path runs."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()[:4]), ("rep",))
  put = lambda t: jax.tree.map(  # noqa: E731
      lambda x: jax.device_put(x, NamedSharding(mesh, P("rep") if x.ndim else P())), t)
  manager = checkpoint.make_manager(str(tmp_path))
  saved = put(_state(0))
  checkpoint.save(manager, 3, saved, {"step": 3})
  back = checkpoint.restore_in_place(manager, 3, put(_state(1)))
  assert _equal(back, saved)
  assert back.params["table"].sharding == saved.params["table"].sharding


def test_restore_in_place_reads_a_compressed_checkpoint(tmp_path, pieces):
  """Checkpoints written compressed (orbax's default, before 2026-12-02) read in place."""
  saved = _state(0)
  _save_compressed(tmp_path, 3, saved)
  current = _state(1)
  back = checkpoint.restore_in_place(checkpoint.make_manager(str(tmp_path)), 3, current)
  assert _equal(back, saved) and current.params["table"].is_deleted()


def test_a_piece_is_written_in_place():
  """The program that writes a piece read into a state array aliases the array and holds
  nothing of its size: reading back a state costs one piece, not one array."""
  from mach_jax import array_store
  array = jax.ShapeDtypeStruct((8, 32768, 256), np.float32)
  block = jax.ShapeDtypeStruct((1, 32768, 256), np.float32)
  compiled = array_store._write_block.lower(array, block, (3, 0, 0)).compile()  # noqa: SLF001
  mem = compiled.memory_analysis()
  assert mem.alias_size_in_bytes == 8 * 32768 * 256 * 4
  assert mem.temp_size_in_bytes <= 32768 * 256 * 4


def test_the_checkpoint_memory_bench_runs_its_restore_modes():
  from experiments.bench import checkpoint_memory
  from mach_jax.array_store import PIECE_BYTES
  rows = checkpoint_memory.main(["--mb", "8", "--modes", "restore_whole,restore_in_place,resume",
                                 "--piece_mb", "0,1"])
  assert [r["mode"] for r in rows] == ["restore_whole"] + ["restore_in_place"] * 2 + ["resume"]
  assert [r.get("piece_mb") for r in rows] == [None, PIECE_BYTES >> 20, 1, None]
  assert all(r["disk_mb"] >= 8 and r["seconds"] > 0 for r in rows)


def test_a_checkpoint_another_process_cannot_read_is_passed_over_by_all(tmp_path,
                                                                         monkeypatch):
  """Across processes a checkpoint is passed over only when every process agrees
  (``sharding.on_every_process``); here the other process's answer is simulated: it could
  not read the newest checkpoint, which this process reads fine. The restore must move it
  aside and go on from the previous one, as the other process does, not resume from it."""
  from mach_jax import sharding
  manager = checkpoint.make_manager(str(tmp_path), keep=5)
  for step in (1, 2):
    checkpoint.save(manager, step, _state(step), {"step": step})
  answers = iter([False])  # The first question (about step 2): another process failed.
  monkeypatch.setattr(sharding, "on_every_process", lambda ok: next(answers, ok) and ok)
  with pytest.warns(RuntimeWarning, match="another process could not restore it"):
    back = checkpoint.restore_latest(manager, checkpoint.abstract_like(_state(0)))
  assert back.step == 1 and _equal(back.state, _state(1))
  assert sorted(os.listdir(tmp_path / checkpoint.CHECKPOINT_DIR)) == ["1", "2.damaged"]


def test_a_kept_checkpoint_lost_is_listed_before_process_0_may_move_folders(tmp_path,
                                                                            monkeypatch):
  """``restore_kept`` as process 1 sees it when another process could not read the kept
  checkpoint: once the processes agree, process 0 moves folders aside until the next
  barrier, so no other process may list the checkpoints between the two barriers: a listing
  that meets a folder being renamed can fail and leave process 0 waiting at the barrier (a
  two-process campaign trial ended so: process 0 there, process 1 gone, the run aborted
  five minutes later). The order is recorded and checked."""
  from mach_jax import restore, sharding
  manager = checkpoint.make_manager(str(tmp_path), keep=5)
  for step in (1, 2, 3):
    checkpoint.save(manager, step, _state(step), {"step": step})
  events, answers = [], iter([False])  # The first question: another process failed.

  def barrier(ok):
    events.append("barrier")
    return next(answers, ok) and ok

  monkeypatch.setattr(sharding, "on_every_process", barrier)
  monkeypatch.setattr(restore.jax, "process_index", lambda: 1)  # Process 0 moves, not this.
  reload = manager.reload
  monkeypatch.setattr(manager, "reload", lambda: events.append("list") or reload())
  with pytest.raises(checkpoint.CheckpointLostError, match=r"newer checkpoints \[2, 3\]"):
    checkpoint.restore_kept(manager, 1, _state(0))
  first = events.index("barrier")
  assert "list" not in events[first:events.index("barrier", first + 1)], events
