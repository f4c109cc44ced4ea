"""What a run survives: a second run on its workdir, a read-only or full disk, a non-finite
loss, a killed export, an untrusted or inconsistent model folder (docs/reliability.md)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mach_jax import bundle, checkpoint, loop, train, workdir as workdir_lib
from mach_jax.predictor import Predictor
from tests.helpers import ROOT, flat, tiny_config

V1_XC = os.path.join(ROOT, "tests", "data", "model_v1", "xc")


@pytest.fixture
def small_disk(tmp_path):
  """A 700 KiB tmpfs (root only; skips where mounting is not allowed)."""
  path = tmp_path / "disk"
  path.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(path)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (not root)")
  yield path
  subprocess.run(["umount", "-l", str(path)], check=False)


# ---- Two runs, one workdir -------------------------------------------------------------


def test_a_second_claim_is_refused_while_the_first_holds(tmp_path):
  with workdir_lib.claim(str(tmp_path)):
    with pytest.raises(workdir_lib.WorkdirInUseError, match=rf"pid {os.getpid()} on "):
      with workdir_lib.claim(str(tmp_path)):
        pass
  with workdir_lib.claim(str(tmp_path)):  # Released at the end of the block.
    pass
  with pytest.raises(KeyError):  # A run that raises is not a killed one: nothing to take
    with workdir_lib.claim(str(tmp_path)):  # over (the next run logs no take-over).
      raise KeyError("a run's error")
  assert (tmp_path / workdir_lib.LOCK_FILE).read_text() == ""


def test_a_run_on_a_workdir_in_use_is_refused_naming_the_other_process(tmp_path):
  """Another process holds the lock: the run is refused before it reads data; once that
  process is killed (its lock left behind), the next run takes the lock over."""
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from mach_jax import workdir as w\n"
       "with w.claim(sys.argv[1]):\n  print('held', flush=True); time.sleep(600)",
       str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lib.WorkdirInUseError, match=rf"pid {holder.pid} on .*started"):
      train.train_and_evaluate(tiny_config(), str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()  # Refused before anything was written.
  finally:
    holder.kill()
    holder.wait()
  assert f"pid {holder.pid}" in (tmp_path / workdir_lib.LOCK_FILE).read_text()  # Stale now.
  with workdir_lib.claim(str(tmp_path)):
    assert f"pid {os.getpid()}" in (tmp_path / workdir_lib.LOCK_FILE).read_text()


# ---- Storage faults --------------------------------------------------------------------


def test_a_read_only_workdir_is_refused_at_start_up(tmp_path, monkeypatch):
  target = tmp_path / "ro"
  if os.geteuid() == 0:  # Root writes through permissions: a read-only mount instead.
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                              str(target)], capture_output=True).returncode == 0
    if not mounted:
      pytest.skip("cannot mount a read-only tmpfs here")
  else:
    target.mkdir(mode=0o555)
  try:
    t0 = time.time()
    with pytest.raises(workdir_lib.WorkdirNotWritableError,
                       match=r"ro/run: the work directory cannot be written \((its file system is "
                             r"read-only|permission denied)"):
      train.train_and_evaluate(tiny_config(), str(target / "run"))
    assert time.time() - t0 < 5  # At start-up: no data read, nothing compiled.
  finally:
    if os.geteuid() == 0:
      subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint(small_disk):
  import jax.numpy as jnp
  manager = checkpoint.make_manager(str(small_disk), keep=2)
  state = {"a": jnp.asarray(np.random.default_rng(0).normal(size=100_000), jnp.float32)}
  checkpoint.save(manager, 1, state, {"step": 1})
  with pytest.raises(checkpoint.CheckpointWriteError,
                     match=r"checkpoint 2 could not be written .*no space left on the device.*"
                           r"steps \[1\] are intact"):
    checkpoint.save(manager, 2, {"a": state["a"] + 1}, {"step": 2})
  d = small_disk / checkpoint.CHECKPOINT_DIR
  assert sorted(os.listdir(d)) == ["1"]  # The unfinished folder is gone.
  again = checkpoint.restore_latest(checkpoint.make_manager(str(small_disk)),
                                    checkpoint.abstract_like(state))
  assert again.step == 1
  np.testing.assert_array_equal(np.asarray(again.state["a"]), np.asarray(state["a"]))


@pytest.mark.parametrize("found_by", ["finish", "the next save"])
def test_a_full_disk_under_a_background_save_names_that_save_and_keeps_the_previous(
    small_disk, found_by):
  """As above with the checkpoint written in the background (accelerators' default): the
  failure comes out where the save is waited for (``finish``: a decay, the run's end) or
  at the next save, and names the checkpoint that failed, not the one being started."""
  import jax.numpy as jnp
  manager = checkpoint.make_manager(str(small_disk), keep=2, background="always")
  state = {"a": jnp.asarray(np.random.default_rng(0).normal(size=100_000), jnp.float32)}
  checkpoint.save(manager, 1, state, {"step": 1})
  checkpoint.finish(manager)
  with pytest.raises(checkpoint.CheckpointWriteError,
                     match=r"checkpoint 2 could not be written .*no space left on the device.*"
                           r"steps \[1\] are intact"):
    checkpoint.save(manager, 2, {"a": state["a"] + 1}, {"step": 2})
    if found_by == "finish":
      checkpoint.finish(manager)
    else:
      checkpoint.save(manager, 3, {"a": state["a"] + 2}, {"step": 3})
  d = small_disk / checkpoint.CHECKPOINT_DIR
  assert sorted(os.listdir(d)) == ["1"]  # The unfinished folder is gone.
  assert (d / "1" / checkpoint.DIGESTS_FILE).exists()
  again = checkpoint.restore_latest(checkpoint.make_manager(str(small_disk)),
                                    checkpoint.abstract_like(state))
  assert again.step == 1
  np.testing.assert_array_equal(np.asarray(again.state["a"]), np.asarray(state["a"]))


def test_a_failed_background_save_is_removed_once_orbax_writes_have_ended(tmp_path,
                                                                         monkeypatch):
  """The background side of ``test_a_failed_export_waits_for_the_writes_still_running``:
  the write of another array (a thread of orbax's) lands 0.3 s after the wait has failed;
  the unfinished folder is removed after it, and no thread of the run's own is waited for."""
  import threading

  import jax.numpy as jnp
  manager = checkpoint.make_manager(str(tmp_path), keep=2, background="always")
  state = {"a": jnp.arange(1000, dtype=jnp.float32)}
  checkpoint.save(manager, 1, state, {"step": 1})
  checkpoint.finish(manager)
  d = tmp_path / checkpoint.CHECKPOINT_DIR
  late_write = type("LateWrite", (threading.Thread,), {"__module__": "orbax.fake"})

  def write_late():
    time.sleep(0.3)
    os.makedirs(d / "2.orbax-checkpoint-tmp-1" / "state", exist_ok=True)
    (d / "2.orbax-checkpoint-tmp-1" / "state" / "fragment").write_bytes(b"")

  def save_in_background(*args, **kwargs):
    late_write(target=write_late).start()
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # The run's own.

  def failing_wait():
    raise ValueError("RESOURCE_EXHAUSTED: No space left on device")

  monkeypatch.setattr(manager, "save", save_in_background)
  checkpoint.save(manager, 2, state, {"step": 2})
  monkeypatch.setattr(manager, "wait_until_finished", failing_wait)
  start = time.monotonic()
  with pytest.raises(checkpoint.CheckpointWriteError, match=r"checkpoint 2 could not be "):
    checkpoint.finish(manager)
  assert time.monotonic() - start < 10
  time.sleep(0.5)
  assert sorted(os.listdir(d)) == ["1"]


@pytest.mark.parametrize("background", [False, True], ids=["synchronous", "background"])
def test_a_full_disk_under_two_processes_ends_both_within_seconds(tmp_path, background):
  """Two processes (as two hosts) write checkpoints to a 9 MiB tmpfs until it is full: the
  process whose save fails ends at once (``sharding.ending_at_once_on_error``) and so the
  other does too, both naming the failed checkpoint, the earlier ones intact. Before, the
  failing process raised and waited at JAX's shutdown barrier while the other waited for
  it inside the save, and both aborted after five minutes (2026-12-07, by hand)."""
  from experiments.bench import faults
  disk = tmp_path / "disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(disk)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (not root)")
  try:
    flags = faults.FLAGS + ["--config.checkpoint.background=always"] * background
    procs, t0 = faults.launch(str(disk / "run"), flags, processes=2), time.time()
    while any(p.poll() is None for p in procs) and time.time() - t0 < 120:
      time.sleep(0.2)
    hung = sum(p.poll() is None for p in procs)
    for p in procs:
      if p.poll() is None:
        p.kill()
    logs = [p.communicate()[0] for p in procs]
    assert not hung, logs[0][-3000:]
    full = [i for i, log in enumerate(logs) if "no space left on the device" in log]
    assert full, logs[0][-3000:]
    failed = full[0]  # It ends itself; the other, once it is gone, ends or aborts (JAX).
    assert procs[failed].returncode == 1 and "ends now, so that the others" in logs[failed]
    assert procs[1 - failed].returncode in (1, -signal.SIGABRT), logs[1 - failed][-3000:]
    left = os.listdir(disk / "run" / checkpoint.CHECKPOINT_DIR)
    assert left and all(name.isdigit() for name in left), left  # No unfinished folder.
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_failed_save_is_reported_and_cleaned_up_without_a_small_disk(tmp_path, monkeypatch):
  """The same guarantee where no tmpfs can be mounted: ENOSPC injected into orbax's save."""
  import errno

  import jax.numpy as jnp
  manager = checkpoint.make_manager(str(tmp_path), keep=2)
  checkpoint.save(manager, 1, {"a": jnp.arange(4.0)}, {"step": 1})

  def full(step, *args, **kwargs):
    os.makedirs(os.path.join(str(manager.directory), f"{step}.orbax-checkpoint-tmp-7"))
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(manager, "save", full)
  with pytest.raises(checkpoint.CheckpointWriteError,
                     match=r"no space left on the device.*steps \[1\] are intact"):
    checkpoint.save(manager, 2, {"a": jnp.arange(4.0)}, {"step": 2})
  assert sorted(os.listdir(tmp_path / checkpoint.CHECKPOINT_DIR)) == ["1"]


# ---- Non-finite training ---------------------------------------------------------------


def test_a_non_finite_loss_keeps_the_last_good_checkpoint_and_a_rerun_resumes(tmp_path,
                                                                             monkeypatch,
                                                                             caplog):
  """A NaN injected into step 30's loss stops the run naming step and repetitions; the
  checkpoints before it are kept, and the same command (here with a new learning rate,
  which a resume accepts) resumes from the last of them."""
  c = tiny_config()
  c.train.update(num_epochs=2, log_every_steps=5)
  c.checkpoint.update(every_steps=10, keep=2)
  add = loop.LossGuard.add

  def poisoned(self, step, loss):
    add(self, step, loss.at[1].set(np.nan) if step == 30 else loss)

  monkeypatch.setattr(loop.LossGuard, "add", poisoned)
  with pytest.raises(loop.NonFiniteLossError, match=r"at step 30 in repetitions \[1\]"):
    train.train_and_evaluate(c, str(tmp_path))
  steps = sorted(int(n) for n in os.listdir(tmp_path / checkpoint.CHECKPOINT_DIR))
  assert steps == [10, 20]  # Step 30's state was never saved.
  monkeypatch.setattr(loop.LossGuard, "add", add)
  c.optimizer.learning_rate = c.optimizer.learning_rate / 2
  with caplog.at_level("INFO"):
    results = train.train_and_evaluate(c, str(tmp_path))
  assert results["steps"] == 2 * -(-3000 // 64)
  assert re.search(r"resumed from \S+/checkpoints/20: epoch 1, batch 20 ", caplog.text)
  logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")
            if '"loss"' in line]
  assert logged == sorted(set(logged))  # Steps 25 and 30 dropped, then logged again.


# ---- Model folders ---------------------------------------------------------------------


def test_an_export_killed_midway_leaves_the_previous_folder(tmp_path, monkeypatch):
  folder = tmp_path / "model"
  shutil.copytree(V1_XC, folder)
  info, config, params = bundle.load(str(folder))
  spec = Predictor.load(str(folder)).spec
  before = flat(params)

  def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed while writing model.json")

  monkeypatch.setattr(bundle.json, "dump", killed)
  doubled = jax.tree.map(lambda x: x * 2, params)
  with pytest.raises(KeyboardInterrupt):
    bundle.export(str(folder), doubled, spec, config, info["num_features"])
  monkeypatch.undo()
  after = flat(bundle.load(str(folder))[2])
  for key, value in before.items():  # The old folder, whole; not the half-written one.
    np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(value))
  bundle.export(str(folder), doubled, spec, config, info["num_features"])
  assert not os.path.exists(str(folder) + ".partial")
  again = flat(bundle.load(str(folder))[2])
  for key, value in before.items():
    np.testing.assert_array_equal(np.asarray(again[key]), 2 * np.asarray(value))


# orbax's write threads may report the failure to an event loop it has closed by then.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_full_disk_under_an_export_says_so_and_leaves_nothing_half_written(small_disk):
  """A run whose model folder does not fit (no checkpoints, so the export is what fills
  the disk). Before: orbax's bare ValueError (RESOURCE_EXHAUSTED...), and model.partial
  left on the full disk."""
  import errno
  c = tiny_config()
  c.train.num_epochs, c.eval.every_epochs, c.checkpoint.enabled = 1, 0, False
  with pytest.raises(OSError, match=r"the model folder .*/run/model could not be written "
                     r"\(no space left on the device.*nothing half-written") as e:
    train.train_and_evaluate(c, str(small_disk / "run"))
  assert e.value.errno == errno.ENOSPC
  assert "model" not in os.listdir(small_disk / "run")
  assert "model.partial" not in os.listdir(small_disk / "run")


@pytest.mark.parametrize("where", ["record", "rename"])
def test_a_failed_export_keeps_the_previous_folder(tmp_path, monkeypatch, where):
  """The same where no tmpfs can be mounted, over an earlier folder: ENOSPC injected once
  the arrays are written, or after the earlier folder was moved aside."""
  import errno
  folder = tmp_path / "model"
  shutil.copytree(V1_XC, folder)
  info, config, params = bundle.load(str(folder))
  spec = Predictor.load(str(folder)).spec
  rename = os.rename

  def full(src, *args, **kwargs):
    if where == "record" or src.endswith(".partial"):
      raise OSError(errno.ENOSPC, "No space left on device")
    return rename(src, *args, **kwargs)

  monkeypatch.setattr(*((bundle.file_digests, "record", full) if where == "record"
                        else (bundle.os, "rename", full)))
  with pytest.raises(OSError, match=r"model could not be written \(no space left"):
    bundle.export(str(folder), jax.tree.map(lambda x: x * 2, params), spec, config,
                  info["num_features"])
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["model"]
  for key, value in flat(params).items():  # The earlier folder, whole.
    np.testing.assert_array_equal(np.asarray(flat(bundle.load(str(folder))[2])[key]),
                                  np.asarray(value))


def test_a_failed_export_waits_for_the_writes_still_running(tmp_path, monkeypatch):
  """orbax raises at the first array whose write fails while other arrays' writes go on in
  their own threads. Here one such write lands 0.3 s after the failure (before: it wrote
  model.partial again once the export had removed it, as a loaded CI machine saw on the
  full tmpfs above)."""
  import threading

  import orbax.checkpoint as ocp
  info, config, params = bundle.load(str(V1_XC))
  spec = Predictor.load(str(V1_XC)).spec

  def failing_save(self, directory, *args, **kwargs):
    def late():
      time.sleep(0.3)
      os.makedirs(os.path.join(directory, "d"), exist_ok=True)
      open(os.path.join(directory, "d", "fragment"), "wb").close()
    threading.Thread(target=late).start()
    raise ValueError("RESOURCE_EXHAUSTED: No space left on device")

  monkeypatch.setattr(ocp.Checkpointer, "save", failing_save)
  with pytest.raises(OSError, match=r"model could not be written \(no space left"):
    bundle.export(str(tmp_path / "model"), params, spec, config, info["num_features"])
  time.sleep(0.5)
  assert os.listdir(tmp_path) == []


def test_a_log_line_on_a_full_disk_names_the_file():
  """Linux's /dev/full answers every write with ENOSPC (before: '[Errno 28] No space left
  on device', no file named)."""
  import errno
  if not os.path.exists("/dev/full"):
    pytest.skip("no /dev/full here")
  with pytest.raises(OSError, match=r"/dev/full: No space left on device: the run's log "
                     r"could not be written; free space and rerun") as e:
    loop.JsonlWriter("/dev/full").write({"step": 1})
  assert e.value.errno == errno.ENOSPC


def test_results_json_is_written_whole_or_not_at_all(tmp_path):
  """A write cut short (here: a value JSON cannot hold, at the end) leaves the previous
  results.json as it was and no partial file; a refit reads its selection's to go on."""
  loop.write_results(str(tmp_path), {"P@1": 0.5})
  with pytest.raises(TypeError):
    loop.write_results(str(tmp_path), {"P@1": 0.7, "later": object()})
  assert json.loads((tmp_path / "results.json").read_text()) == {"P@1": 0.5}
  assert os.listdir(tmp_path) == ["results.json"]


def test_a_resumed_run_drops_what_it_logged_after_its_checkpoint(tmp_path, caplog):
  """Resuming from step 20 with one decay: later steps, a second decay, the final record
  and a line cut short by the kill go (they are logged again); the rest stays in order."""
  writer = loop.JsonlWriter(str(tmp_path / "metrics.jsonl"))
  records = [{"step": 10, "loss": 1.0}, {"step": 20, "eval/P@1": 0.5},
             {"step": 20, "decay": 1, "restored_step": 10}, {"step": 30, "loss": 0.5},
             {"step": 30, "decay": 2, "restored_step": 20}, {"step": 30, "final": True}]
  for r in records:
    writer.write(r)
  with open(writer.path, "a") as f:
    f.write('{"step": 40, "lo')
  writer.rewind(20, 1)
  assert [json.loads(line) for line in open(writer.path)] == records[:3]
  assert "not a JSON object" not in caplog.text  # The kill's cut line goes quietly.
  writer.rewind(0, 0)  # Started afresh (no checkpoint): nothing is kept.
  assert open(writer.path).read() == ""
  with open(writer.path, "w") as f:  # A damaged line within the file is named.
    f.write('{"step": 10}\n{"st\x00p": 1\n[3]\n{"step": 20}\n')
  writer.rewind(20, 0)
  assert [json.loads(line) for line in open(writer.path)] == [{"step": 10}, {"step": 20}]
  for i in (2, 3):
    assert f"metrics.jsonl:{i}: not a JSON object, dropped" in caplog.text


@pytest.mark.parametrize("field, value, array", [
    ("B", 16, "output/kernel"), ("R", 3, "leading axis R=3"), ("input_dim", 50, "embedding"),
])
def test_a_folder_whose_arrays_disagree_with_its_hash_spec_is_refused(tmp_path, field, value,
                                                                      array):
  folder = tmp_path / "model"
  shutil.copytree(V1_XC, folder)
  info = json.load(open(folder / "model.json"))
  info["hash_spec"][field] = value
  json.dump(info, open(folder / "model.json", "w"))
  with pytest.raises(ValueError, match=rf"model: array .*{re.escape(array)}.*inconsistent"):
    Predictor.load(str(folder))


def _exported(tmp_path):
  """A current model folder (with its files' record), re-exported from the format-1 one."""
  from mach_jax.hashing import HashSpec
  info, config, params = bundle.load(V1_XC)
  out = str(tmp_path / "exported")
  bundle.export(out, params, HashSpec.from_dict(info["hash_spec"]), config,
                info["num_features"])
  return out


def test_every_file_of_a_model_folder_is_checked_before_an_array_is_read(tmp_path):
  """A byte changed in the weights loaded as other weights, silently; a damaged metadata
  file failed with a message about shapes. Now each file is refused by name: one byte
  flipped, the file cut to half, the file missing."""
  folder = _exported(tmp_path)
  files = json.load(open(os.path.join(folder, "model.json")))["files"]
  assert any(rel.startswith("params/ocdbt.process_0/d/") for rel in files)  # The arrays.
  _, _, want = bundle.load(folder)
  for rel in files:
    for damage in ("flip", "cut", "remove"):
      copy = tmp_path / "copy"
      shutil.rmtree(copy, ignore_errors=True)
      shutil.copytree(folder, copy)
      target = copy / rel
      data = bytearray(target.read_bytes())
      if damage == "remove":
        target.unlink()
      else:
        if damage == "flip" and data:
          data[len(data) // 2] ^= 0x10
        target.write_bytes(bytes(data[: len(data) // 2] if damage == "cut" else data))
      if damage == "flip" and not data:
        continue  # An empty file has no byte to flip.
      with pytest.raises(bundle.file_digests.DamagedFolderError,
                         match=re.escape(str(target)) + ": (missing|.* bytes|its sha256 digest)"):
        bundle.load(str(copy))
  # Undamaged, and after model.json alone was rewritten (a calibration), it loads the same.
  bundle.set_calibration(folder, {"method": "platt", "temperature": 1.5, "bias": 0.0})
  _, _, got = bundle.load(folder)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("entry", [
    {"../x": {"bytes": 1, "sha256": "0" * 64}},
    {"params/a": {"bytes": -1, "sha256": "0" * 64}},
    {"params/a": {"bytes": 1, "sha256": "not hex"}},
    {"params/a": {"bytes": 1, "md5": "0" * 32}},
    {"params/a": {"bytes": 1, "crc32": "0" * 64}},
    {"model.json": {"bytes": 1, "sha256": "0" * 64}},
    ["params/a"],
])
def test_a_files_record_export_cannot_have_written_is_refused_naming_model_json(tmp_path,
                                                                              entry):
  folder = _exported(tmp_path)
  info = json.load(open(os.path.join(folder, "model.json")))
  info["files"] = entry
  json.dump(info, open(os.path.join(folder, "model.json"), "w"))
  with pytest.raises(ValueError, match=r"model.json: .*'files'"):
    bundle.load(folder)


def test_nothing_in_the_package_unpickles():
  """Loading a model folder never runs code from it: JSON, .npy without pickles, orbax."""
  offenders = []
  for top in ("mach_jax", "experiments"):
    for d, _, files in os.walk(os.path.join(ROOT, top)):
      for name in files:
        if name.endswith(".py"):
          where = os.path.relpath(os.path.join(d, name), ROOT)
          for i, line in enumerate(open(os.path.join(d, name)), start=1):
            for pattern in (r"\bimport pickle\b", r"\bcloudpickle\b", r"\bdill\b",
                            r"allow_pickle\s*=\s*True", r"\bjoblib\.load\b",
                            r"\btorch\.load\b"):
              if re.search(pattern, line):
                offenders.append(f"{where}:{i}: {line.strip()}")
            if "np.load(" in line and "allow_pickle=False" not in line:
              offenders.append(f"{where}:{i}: np.load without allow_pickle=False")
  assert not offenders, offenders


def test_a_checkpoint_and_an_evaluation_due_at_the_same_step_save_once(tmp_path):
  """With a validation slice the evaluation at an epoch's end saves that step; a periodic
  save due at the same step must not save it a second time (orbax refuses an existing
  step)."""
  c = tiny_config()
  c.data.validation_fraction = 0.05
  c.checkpoint.update(best_metric="P@1", every_steps=5)
  c.train.num_epochs = 1
  results = train.train_and_evaluate(c, str(tmp_path))
  assert results["steps"] % 5 == 0  # The epoch's last step is a periodic save's step too.
  assert results["selected"]["step"] == results["steps"]
