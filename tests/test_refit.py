"""The refit: the schedule a validation slice chose, replayed on all the training data."""

import json
import os

import jax
import numpy as np
import pytest

from mach_jax import bundle, optim, refit, state as state_lib, train
from tests.helpers import tiny_config

S = 10  # Steps per epoch of the made-up selection runs.


def _decay(step, restored_step):
  return {"step": step, "epoch": step // S, "decay": 1, "restored_step": restored_step}


def test_the_schedule_counts_the_kept_models_epochs_and_its_decays():
  evals = [{"step": S * e, "eval/P@1": 0.1} for e in range(1, 15)]
  # Text WordNet's shape: epoch 11 kept, the decay at epoch 12 went back to it, no better
  # epoch after: the kept model never trained at the decayed rate.
  assert refit.schedule_of({"step": 11 * S}, [*evals, _decay(12 * S, 11 * S)], S) == (
      refit.Schedule(11, ()))
  # Debian's: epoch 9 discarded (back to epoch 8), epoch 11 of the loop kept: 8 epochs at
  # the rate, then 2 at a tenth of it.
  assert refit.schedule_of({"step": 11 * S}, [*evals, _decay(9 * S, 8 * S)], S) == (
      refit.Schedule(10, (8,)))
  # Logged twice (a run killed after the decay, before its next checkpoint, decays again
  # on resuming): one decay.
  again = [*evals, _decay(9 * S, 8 * S), *evals[8:10], _decay(9 * S, 8 * S)]
  assert refit.schedule_of({"step": 11 * S}, again, S) == refit.Schedule(10, (8,))
  # Two decays, each discarding one epoch: the second's restored step counts the first's.
  two = [_decay(5 * S, 4 * S), {**_decay(8 * S, 7 * S), "decay": 2}]
  assert refit.schedule_of({"step": 10 * S}, two, S) == refit.Schedule(8, (4, 6))
  with pytest.raises(ValueError, match="replays whole epochs.*every_epochs"):
    refit.schedule_of({"step": 11 * S + 3}, evals, S)


def test_the_piecewise_rate_multiplies_by_each_factor_from_its_share_of_the_run():
  c = tiny_config().optimizer
  c.update(learning_rate=0.5, schedule="piecewise", boundaries=((0.4, 0.1), (0.8, 0.5)))
  lr = optim.learning_rate(c, 100)
  assert [float(lr(s)) for s in (0, 39, 40, 79, 80, 99)] == pytest.approx(
      [0.5, 0.5, 0.05, 0.05, 0.025, 0.025])
  for bad in ((), ((1.0, 0.1),), ((0.0, 0.1),)):
    c.boundaries = bad
    with pytest.raises(ValueError, match="schedule=.piecewise. needs config.optimizer.boundaries"):
      optim.learning_rate(c, 100)


def test_a_refit_needs_a_validation_slice_and_epoch_end_evaluations(tmp_path):
  c = tiny_config()
  c.train.refit = True
  with pytest.raises(ValueError, match="validation_fraction > 0"):
    train.train_and_evaluate(c, str(tmp_path))
  c.data.validation_fraction, c.eval.every_steps = 0.1, 7
  with pytest.raises(ValueError, match="every_steps=7 -> 0"):
    train.train_and_evaluate(c, str(tmp_path))


def test_the_selections_checkpoints_go_once_it_kept_a_model_unless_asked_to_keep_them(
    tmp_path):
  """A stand-in for train_and_evaluate: the selection writes its records and a checkpoint."""
  def run(config, workdir, kept=True):
    os.makedirs(os.path.join(workdir, "checkpoints", "6"))
    if config.data.validation_fraction:  # The selection.
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"selected": {"step": 6} if kept else None, "num_train": 64 * 3,
                   "train_seconds": 1.0, "peak_rss_bytes": 1, "num_validation": 8}, f)
      open(os.path.join(workdir, "metrics.jsonl"), "w").close()
    return {}

  c = tiny_config()
  c.data.validation_fraction, c.train.refit = 0.1, True
  for keep in (False, True):
    c.checkpoint.keep_selection = keep
    res = refit.select_and_refit(c, str(tmp_path / str(keep)), run)
    assert res["refit"]["epochs"] == 2  # 6 steps of 3 an epoch.
    assert os.path.isdir(tmp_path / str(keep) / "select" / "checkpoints") == keep
  c.checkpoint.keep_selection = False  # Nothing kept: its checkpoints stay, and it says so.
  with pytest.raises(ValueError, match="no validation evaluation was kept.*delete .*select"):
    refit.select_and_refit(c, str(tmp_path / "none"),
                           lambda config, workdir: run(config, workdir, kept=False))
  assert os.path.isdir(tmp_path / "none" / "select" / "checkpoints")


def _plateau_refit_config():
  c = tiny_config()
  c.data.validation_fraction = 0.1
  c.optimizer.learning_rate = 3e-2  # Overfits the tiny set within a few epochs.
  c.train.update(num_epochs=10, early_stopping_patience=2, decay_patience=1, refit=True)
  c.eval.update(every_epochs=1, subset=0)
  return c


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_a_refit_trains_every_point_for_the_chosen_epochs_and_reads_the_test_split_once(
    tmp_path):
  c = _plateau_refit_config()
  res = train.train_and_evaluate(c, str(tmp_path))
  sel_dir = os.path.join(str(tmp_path), refit.SELECT_DIR)
  with open(os.path.join(sel_dir, "results.json")) as f:
    selection = json.load(f)
  # The selection chose on validation and did not read the test split.
  assert "P@1" not in selection and selection["selected"] and selection["decays"] == 1
  assert not any(k.startswith("test/P") for r in _records(sel_dir) for k in r)
  # Its checkpoints are gone once it ended; its kept model stays.
  assert not os.path.exists(os.path.join(sel_dir, "checkpoints"))
  assert os.path.isdir(os.path.join(sel_dir, bundle.BUNDLE_DIR))
  # The refit: every training point, the kept model's epochs, the decays at their epochs.
  schedule = refit.Schedule(res["refit"]["epochs"], tuple(res["refit"]["decays"]))
  assert schedule == refit.schedule_of(selection["selected"], _records(sel_dir),
                                       -(-selection["num_train"] // 64))
  assert res["num_train"] == selection["num_train"] + selection["num_validation"]
  assert res["num_validation"] == 0 and res["selected"] == selection["selected"]
  assert res["steps"] == schedule.epochs * -(-res["num_train"] // 64)
  assert [tuple(b) for b in res["config"]["optimizer"]["boundaries"]] == [
      (e / schedule.epochs, 0.1) for e in schedule.decays]
  assert not any("eval/P@1" in r for r in _records(str(tmp_path)))  # No periodic evaluation.
  assert res["P@1"] > 0.5 and res["refit"]["select_train_seconds"] > 0
  # Rerun: the finished selection is read back, not trained again.
  n = len(_records(sel_dir))
  again = train.train_and_evaluate(c, str(tmp_path))
  assert again["P@1"] == res["P@1"] and len(_records(sel_dir)) == n


def test_the_replay_on_the_selections_own_points_ends_with_its_kept_model(tmp_path,
                                                                         monkeypatch):
  """What the refit replays is what the kept model trained: given the selection's own
  training points, the refit's schedule ends with the selection's kept model. One batch an
  epoch (the selection's epochs after a decay take other shuffles than the refit's; a
  full batch makes the order moot up to float sums)."""
  c = _plateau_refit_config()
  c.optimizer.learning_rate = 0.1
  c.train.update(batch_size=4096, num_epochs=40, decay_factor=0.3)
  selection = refit.selection_config(c)
  sel_dir = str(tmp_path / "select")
  res = train.train_and_evaluate(selection, sel_dir)
  schedule = refit.schedule_of(res["selected"], _records(sel_dir), 1)
  assert schedule.decays and schedule.epochs > schedule.decays[-1], schedule  # Both rates.
  load = train.data_lib.load_splits  # The refit reads the selection's training part.
  monkeypatch.setattr(train.data_lib, "load_splits", lambda data, *a, **k: load(
      selection.data, *a, **k)._replace(validation=None))
  train.train_and_evaluate(refit.refit_config(c, schedule), str(tmp_path / "replay"))
  _, _, kept = bundle.load(os.path.join(sel_dir, bundle.BUNDLE_DIR))
  _, _, got = bundle.load(str(tmp_path / "replay" / bundle.BUNDLE_DIR))
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


class _Killed(Exception):
  pass


def test_a_run_killed_in_its_selection_or_its_refit_resumes_into_the_same_model(
    tmp_path, monkeypatch):
  c = _plateau_refit_config()
  c.checkpoint.every_steps = 25
  c.train.num_epochs = 20  # The selection stops early, after 10.
  whole = train.train_and_evaluate(c, str(tmp_path / "whole"))
  select_steps = json.load(open(tmp_path / "whole" / refit.SELECT_DIR / "results.json"))["steps"]
  decayed = [r["step"] for r in _records(str(tmp_path / "whole" / refit.SELECT_DIR))
             if "decay" in r]
  assert decayed and decayed[0] % c.checkpoint.every_steps, decayed
  selection = json.load(open(tmp_path / "whole" / refit.SELECT_DIR / "results.json"))
  assert selection["steps"] < c.train.num_epochs * -(-selection["num_train"] // 64)  # Early.
  step, export = state_lib.TrainSetup.run, bundle.export
  # After a decay, before the next checkpoint: the resumed run decays (and logs it) again.
  # In the selection's export, after it stopped early: the resumed run must not train on.
  for name, kill_at in (("in_selection", select_steps // 2), ("after_a_decay", decayed[0] + 1),
                        ("in_refit", select_steps + 40), ("in_the_selections_export", None)):
    calls = []

    def run(self, state, batch, kill_at=kill_at, calls=calls):
      calls.append(1)
      if len(calls) == kill_at:
        raise _Killed
      return step(self, state, batch)

    def killed_export(*args, **kwargs):
      raise _Killed
    if kill_at is None:
      monkeypatch.setattr(bundle, "export", killed_export)
    monkeypatch.setattr(state_lib.TrainSetup, "run", run)
    with pytest.raises(_Killed):
      train.train_and_evaluate(c, str(tmp_path / name))
    monkeypatch.setattr(state_lib.TrainSetup, "run", step)
    monkeypatch.setattr(bundle, "export", export)
    resumed = train.train_and_evaluate(c, str(tmp_path / name))
    assert resumed["selected"] == whole["selected"] and resumed["refit"]["epochs"] == (
        whole["refit"]["epochs"])
    for k in ("P@1", "P@3", "P@5", "steps"):
      assert resumed[k] == whole[k], (name, k)
    for sub in (refit.SELECT_DIR, ""):  # Each log reads as the uninterrupted run's.
      logs = [[{k: v for k, v in r.items() if k != "examples_per_second"}
               for r in _records(str(tmp_path / run / sub))] for run in ("whole", name)]
      assert logs[0] == logs[1], (name, sub)
    _, _, a = bundle.load(str(tmp_path / "whole" / bundle.BUNDLE_DIR))
    _, _, b = bundle.load(str(tmp_path / name / bundle.BUNDLE_DIR))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
