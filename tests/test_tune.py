"""experiments.tune: learning rates probed on the validation slice, the test split read once."""

import json
import os

import pytest

from experiments import tune
from mach_jax import train
from tests.helpers import tiny_config


def _validated_config():
  c = tiny_config()
  c.data.validation_fraction = 0.1
  c.train.num_epochs = 2
  c.eval.update(every_epochs=1, subset=0)
  return c


def test_probes_choose_on_validation_and_only_the_final_run_reads_test(tmp_path):
  calls = []
  validation = {1e-3: 0.5, 3e-3: 0.7, 1e-2: 0.7}  # A tie: the smaller rate wins.

  def run(c, workdir):
    calls.append((c.optimizer.learning_rate, c.train.num_epochs, c.eval.final_test))
    return {"selected": {"metrics": {"P@1": validation[c.optimizer.learning_rate]}},
            "train_seconds": 1.0, **({"P@1": 0.6, "P@3": 0.5, "P@5": 0.4}
                                     if c.eval.final_test else {})}
  out = tune.tune(_validated_config(), str(tmp_path), ["1e-2", "1e-3", "3e-3"], 1, run=run)
  assert calls == [(1e-3, 1, False), (3e-3, 1, False), (1e-2, 1, False), (3e-3, 2, True)]
  assert out["learning_rate"] == 3e-3 and out["final"]["P@1"] == 0.6
  assert json.load(open(tmp_path / "tune.json")) == out


def test_with_a_refit_only_the_final_run_refits_and_its_time_counts_the_selection(tmp_path):
  calls = []

  def run(c, workdir):
    calls.append(c.train.refit)
    return {"selected": {"metrics": {"P@1": 0.5}}, "train_seconds": 1.0,
            **({"P@1": 0.6, "refit": {"select_train_seconds": 2.0}} if c.train.refit else {})}
  c = _validated_config()
  c.train.refit = True
  out = tune.tune(c, str(tmp_path), ["1e-3", "3e-3"], 1, run=run)
  assert calls == [False, False, True]
  assert out["final"]["train_seconds"] == 3.0 and out["probe_seconds"] == 2.0


def test_tune_needs_a_validation_slice_and_fitting_probes(tmp_path):
  c = tiny_config()
  with pytest.raises(ValueError, match="validation_fraction > 0"):
    tune.tune(c, str(tmp_path), ["1e-3"], 1)
  with pytest.raises(ValueError, match="--probe_epochs=3"):
    tune.tune(_validated_config(), str(tmp_path), ["1e-3"], 3)


def test_real_probes_never_evaluate_the_test_split(tmp_path):
  out = tune.tune(_validated_config(), str(tmp_path), ["1e-3", "1e-2"], 1)
  for lr in ("0.001", "0.01"):
    probe = json.load(open(os.path.join(tmp_path, f"probe_lr{lr}", "results.json")))
    assert "P@1" not in probe and probe["popularity_baseline"] is None
    assert probe["selected"]["metrics"]["P@1"] > 0
  final = json.load(open(os.path.join(tmp_path, "final", "results.json")))
  assert final["config"]["optimizer"]["learning_rate"] == out["learning_rate"]
  assert final["P@1"] == out["final"]["P@1"] > 0
  # Rerun: the finished probes are read back, not trained again; only the final run goes
  # on (here: already complete, so it evaluates again).
  calls = []
  again = tune.tune(_validated_config(), str(tmp_path), ["1e-3", "1e-2"], 1,
                    run=lambda c, w: calls.append(w) or train.train_and_evaluate(c, w))
  assert calls == [os.path.join(tmp_path, "final")]
  assert again["probes"] == out["probes"] and again["final"]["P@1"] == out["final"]["P@1"]
