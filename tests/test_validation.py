"""The validation slice: carved from training data the same way in memory and on disk,
never trained on, and the model a run ends with is the best validation evaluation."""

import json
import os

import jax
import numpy as np
import pytest

from mach_jax import bundle, loop, state as state_lib, train
from mach_jax.data import load_splits, validation
from mach_jax.data.query_log import QueryLog
from mach_jax.data.text import TextFeaturizer
from tests.helpers import tiny_config, write_log


def test_held_out_is_deterministic_and_about_the_fraction():
  a = validation.held_out(np.arange(100_000), 0.05, 0)
  assert np.array_equal(a, validation.held_out(np.arange(100_000), 0.05, 0))
  assert abs(a.mean() - 0.05) < 0.005
  b = validation.held_out(np.arange(100_000), 0.05, 1)
  assert abs((a & b).mean() - 0.05 ** 2) < 0.002  # Another seed: an independent slice.
  assert not validation.held_out(np.arange(10), 0.0, 0).any()
  with pytest.raises(ValueError, match="validation_fraction=1.0"):
    validation.held_out(np.arange(10), 1.0, 0)


def test_query_log_parts_partition_the_file_like_the_in_memory_rule(tmp_path):
  path = str(write_log(tmp_path / "q.tsv", 1000))
  f = TextFeaturizer(num_features=1 << 12)
  train_part = QueryLog(path, f, 50, holdout=(0.1, 3), read_chunk=64)
  held_part = QueryLog(path, f, 50, holdout=(0.1, 3), part="validation", read_chunk=64)
  whole = QueryLog(path, f, 50).to_xc()
  rule = validation.held_out(np.arange(1000), 0.1, 3)
  assert train_part.num_points + held_part.num_points == 1000
  assert held_part.num_points == rule.sum() > 50
  np.testing.assert_array_equal((held_part.to_xc().X != whole.X[rule]).nnz, 0)
  np.testing.assert_array_equal(train_part.label_counts() + held_part.label_counts(),
                                QueryLog(path, f, 50).label_counts())
  rows = sum(int(b["mask"].sum()) for b in train_part.batches(128, seed=0))
  assert rows == train_part.num_points


def test_in_memory_split_never_trains_on_the_slice():
  c = tiny_config()
  c.data.validation_fraction = 0.1
  splits = load_splits(c.data)
  c.data.validation_fraction = 0.0
  whole = load_splits(c.data)
  rule = validation.held_out(np.arange(whole.train.num_points), 0.1, 0)
  assert splits.validation.num_points == rule.sum()
  assert splits.train.num_points == whole.train.num_points - rule.sum()
  assert (splits.validation.X != whole.train.X[rule]).nnz == 0
  assert (splits.train.X != whole.train.X[~rule]).nnz == 0
  assert (splits.test.X != whole.test.X).nnz == 0  # The test split is untouched.


def test_best_tracks_the_highest_value_and_patience():
  best = loop.Best("P@1")
  for step, value in enumerate([0.1, 0.3, 0.2, 0.25], start=1):
    best.update({"P@1": value}, step, 1, {"w": np.zeros(2)})
  assert best.record["step"] == 2 and best.record["value"] == 0.3 and best.stale == 2
  assert best.exhausted(2) and not best.exhausted(3) and not best.exhausted(0)


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
  c = tiny_config()
  c.data.validation_fraction = 0.1
  c.train.num_epochs = 4
  c.eval.update(every_epochs=1, subset=0)
  workdir = str(tmp_path_factory.mktemp("validated"))
  return c, workdir, train.train_and_evaluate(c, workdir)


def test_run_evaluates_on_validation_and_keeps_the_best(validated_run):
  c, workdir, res = validated_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [r for r in map(json.loads, f) if "eval/P@1" in r]
  assert len(evals) == 4  # Every epoch, the last one included.
  assert all(r["eval_points"] == res["num_validation"] > 0 for r in evals)
  assert res["num_train"] + res["num_validation"] == c.data.synthetic.num_train
  top = max(evals, key=lambda r: r["eval/P@1"])  # The first best on ties.
  assert res["selected"]["step"] == top["step"]
  assert res["selected"]["value"] == top["eval/P@1"]


def test_rerun_of_a_finished_validated_run_restores_the_best(validated_run, tmp_path):
  c, workdir, res = validated_run
  again = train.train_and_evaluate(c, workdir)  # Resumes: training already complete.
  assert again["selected"]["step"] == res["selected"]["step"]
  for k in ("P@1", "P@3", "P@5"):
    assert again[k] == res[k]


def test_a_run_rerun_with_fewer_epochs_than_it_trained_ends_with_its_best_so_far(
    validated_run, tmp_path):
  """How a long run is ended early (docs/text.md): the same command with
  ``train.num_epochs`` at most the epochs it has done trains nothing more and exports the
  best evaluation so far."""
  import shutil
  c, workdir, res = validated_run
  shutil.copytree(workdir, tmp_path / "run")
  os.remove(tmp_path / "run" / "results.json")  # As a run stopped before its end.
  shorter = c.copy_and_resolve_references()
  shorter.train.num_epochs = 2
  again = train.train_and_evaluate(shorter, str(tmp_path / "run"))
  assert again["steps"] == res["steps"] and again["selected"] == res["selected"]
  for k in ("P@1", "P@3", "P@5"):
    assert again[k] == res[k]


def test_best_read_back_from_checkpoints_equals_the_best_kept_in_memory(tmp_path):
  """With checkpoints the best state is not held in memory: the run reads it back at the
  end. A run that stops early (its best evaluation is not its last step) must end with the
  same model as one without checkpoints, which keeps a copy of the best parameters."""
  c = tiny_config()
  c.data.validation_fraction = 0.1
  c.optimizer.learning_rate = 3e-2  # Overfits the tiny set within a few epochs.
  c.train.update(num_epochs=10, early_stopping_patience=1)
  c.eval.update(every_epochs=1, subset=0)
  on_disk = train.train_and_evaluate(c, str(tmp_path / "disk"))
  assert on_disk["selected"]["step"] < on_disk["steps"]
  c.checkpoint.enabled = False
  in_memory = train.train_and_evaluate(c, str(tmp_path / "memory"))
  assert in_memory["selected"] == on_disk["selected"]
  for k in ("P@1", "P@3", "P@5"):
    assert in_memory[k] == on_disk[k]


def test_validation_needs_periodic_evaluations(tmp_path):
  c = tiny_config()
  c.data.validation_fraction = 0.1
  c.eval.every_epochs = 0
  with pytest.raises(ValueError, match="validation_fraction > 0 selects the model"):
    train.train_and_evaluate(c, str(tmp_path))


def test_text_run_with_idf_and_validation_serves_what_it_evaluated(tmp_path):
  """idf fitted on the training part only, saved in the model folder, and the Searcher's
  answers equal the evaluation path's on the test log."""
  from mach_jax import config as config_lib
  from mach_jax.search import Searcher
  train_log = str(write_log(tmp_path / "train.tsv", 2000, seed=0))
  test_log = str(write_log(tmp_path / "test.tsv", 200, seed=1))
  c = config_lib.default_config()
  c.data.update(name="queries", train=train_log, test=test_log, num_labels=50,
                validation_fraction=0.1)
  c.data.featurizer.update(num_features=1 << 12, idf=True)
  c.model.update(R=2, B=8, hidden=(16,), loss="softmax_hist")
  c.mesh = (("data", 1), ("rep", 1))
  c.train.update(batch_size=64, num_epochs=2, progress_bar=False)
  c.eval.update(every_epochs=1, estimators=("mean",), estimator="mean")
  res = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert os.path.exists(tmp_path / "run" / "model" / "featurizer_idf.npy")
  s = Searcher.load(str(tmp_path / "run"))
  expected = s.featurizer.fit_idf(QueryLog(train_log, s.featurizer, 50,
                                           holdout=(0.1, 0)).texts()).idf
  np.testing.assert_array_equal(s.featurizer.idf, expected)  # Training part only.
  queries = [l.split("\t")[0] for l in open(test_log)]
  hits = s.search(queries, k=1)
  truth = [set(map(int, l.rstrip("\n").split("\t")[1].split(","))) for l in open(test_log)]
  p1 = np.mean([h[0].id in t for h, t in zip(hits, truth)])
  assert p1 == pytest.approx(res["P@1"])


def test_a_run_without_a_test_log_trains_the_same_model_and_reports_no_test_figures(
    tmp_path):
  """``data.test = ''``: a user with a training log only. The validation slice chooses as
  before; the model is the one a run with a test log trains, bit for bit."""
  from mach_jax import config as config_lib
  train_log = str(write_log(tmp_path / "train.tsv", 1000, seed=0))
  test_log = str(write_log(tmp_path / "test.tsv", 100, seed=1))
  c = config_lib.default_config()
  c.data.update(name="queries", train=train_log, test="", num_labels=50,
                validation_fraction=0.1)
  c.model.update(R=2, B=8, hidden=(16,), loss="softmax_hist")
  c.mesh = (("data", 1), ("rep", 1))
  c.train.update(batch_size=64, num_epochs=2, progress_bar=False)
  c.eval.update(every_epochs=1, estimators=("mean",), estimator="mean")
  alone = train.train_and_evaluate(c, str(tmp_path / "alone"))
  assert "P@1" not in alone and alone["num_test"] == 0 and alone["selected"]
  assert alone["popularity_baseline"] is None
  c.data.test = test_log
  with_test = train.train_and_evaluate(c, str(tmp_path / "with_test"))
  assert with_test["P@1"] > 0 and with_test["selected"] == alone["selected"]
  _, _, a = bundle.load(str(tmp_path / "alone" / bundle.BUNDLE_DIR))
  _, _, b = bundle.load(str(tmp_path / "with_test" / bundle.BUNDLE_DIR))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Without a validation slice the periodic evaluations would have nothing to read.
  c.data.update(test="", validation_fraction=0.0)
  c.checkpoint.best_metric = ""
  with pytest.raises(ValueError, match="config.data.test is empty"):
    train.train_and_evaluate(c, str(tmp_path / "nothing"))
  c.eval.update(every_epochs=0, subset=100)
  assert "P@1" not in train.train_and_evaluate(c, str(tmp_path / "no_evals"))


@pytest.mark.parametrize("K, labels, D, R, B, input_dim, loss, decode", [
    (159, 2.4, 1836, 8, 128, 0, "bce", "exact"),
    (63_000, 1.0, 1 << 18, 8, 2048, 1 << 15, "softmax_hist", "exact"),
    (1_000_000, 1.1, 100_000, 8, 8192, 8192, "softmax_hist", "candidates"),
    (20, 1.0, 1 << 16, 8, 20, 8192, "softmax_hist", "exact")])
def test_resolve_derives_the_model_and_decoding_from_the_data(K, labels, D, R, B, input_dim,
                                                              loss, decode):
  from experiments.configs import text
  from mach_jax import config as config_lib
  c = config_lib.resolve(text.get_config(), K, labels, D)
  assert (c.model.R, c.model.B, c.model.input_dim, c.model.loss, c.eval.decode) == (
      R, B, input_dim, loss, decode)
  fixed = config_lib.resolve(tiny_config(), K, labels, D)  # Explicit fields stay as they are.
  assert (fixed.model.R, fixed.model.B, fixed.model.input_dim, fixed.model.loss) == (
      4, 32, 0, "softmax_hist")
  with pytest.raises(ValueError, match="input_dim=-1 is derived from D"):
    config_lib.resolve(text.get_config(), K, labels)


def test_default_text_config_learns_a_small_catalogue(tmp_path):
  """The one command of experiments/configs/text.py on data it was not tuned for: a
  500-product synthetic catalogue (10,000 queries), its defaults untouched (the refit
  included) but for the paths, the hashed dimension and the epoch cap (for the suite's
  time)."""
  from experiments.configs import text
  from experiments.datasets import products
  root = str(tmp_path / "data")
  products.generate(root, 500, 10_000, seed=3, test_every=20)
  c = text.get_config()
  c.data.update(train=f"{root}/train.tsv", test=f"{root}/test.tsv",
                catalogue=f"{root}/products.tsv")
  c.data.featurizer.num_features = 1 << 16
  c.mesh = (("data", 1), ("rep", -1))
  c.train.update(num_epochs=1, progress_bar=False)
  res = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert res["config"]["model"]["R"] == 8 and res["config"]["model"]["B"] == 128
  assert res["config"]["model"]["loss"] == "softmax_hist"
  assert res["selected"] is not None and res["refit"]["num_validation"] > 100
  assert res["num_validation"] == 0  # The refit trained on the slice too.
  assert res["P@1"] > res["popularity_baseline"]["P@1"] + 0.2, res["P@1"]


def test_a_warm_up_longer_than_the_run_is_refused(tmp_path):
  c = tiny_config()
  c.optimizer.update(schedule="cosine", warmup_steps=10_000)
  with pytest.raises(ValueError, match="warm-up of 10000 steps outlasts the run's 141 steps"):
    train.train_and_evaluate(c, str(tmp_path))


def _plateau_config(**train):
  c = tiny_config()
  c.data.validation_fraction = 0.1
  c.optimizer.learning_rate = 3e-2  # Overfits the tiny set within a few epochs.
  c.train.update(num_epochs=10, early_stopping_patience=1, decay_patience=1, **train)
  c.eval.update(every_epochs=1, subset=0)
  return c


def _events(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return ([r for r in records if "decay" in r], [r for r in records if "eval/P@1" in r])


def test_a_plateau_goes_back_to_the_best_state_with_a_smaller_step(tmp_path):
  """With a step of ~0 after the decay, the next evaluation must be the best one's again:
  the run went back to the best state, not on from the last."""
  c = _plateau_config(decay_factor=1e-9)
  res = train.train_and_evaluate(c, str(tmp_path))
  decays, evals = _events(str(tmp_path))
  assert res["decays"] == 1 and len(decays) == 1
  event = decays[0]
  best_before = max((e for e in evals if e["step"] <= event["step"]),
                    key=lambda e: e["eval/P@1"])
  assert event["restored_step"] == best_before["step"] < event["step"]
  assert event["learning_rate"] == pytest.approx(3e-2 * 1e-9)
  after = next(e for e in evals if e["step"] > event["step"])
  assert after["eval/P@1"] == best_before["eval/P@1"]
  assert after["eval/P@5"] == best_before["eval/P@5"]
  assert res["steps"] < c.train.num_epochs * (after["step"] - event["step"])  # Stopped early.


def test_a_decayed_step_is_compiled_before_the_run_holds_a_state(tmp_path, monkeypatch):
  """Every step program, the decayed ones included, is compiled before the state exists:
  none is compiled beside it at the decay."""
  events = []
  init, initial = state_lib.CompiledStep.__init__, state_lib.TrainSetup.initial_state
  monkeypatch.setattr(state_lib.CompiledStep, "__init__",
                      lambda self, *a: events.append("compile") or init(self, *a))
  monkeypatch.setattr(state_lib.TrainSetup, "initial_state",
                      lambda self: events.append("state") or initial(self))
  res = train.train_and_evaluate(_plateau_config(max_decays=2), str(tmp_path))
  assert res["decays"] >= 1
  assert events == ["compile"] * 3 + ["state"]  # The run's step, then one per decay.


def test_a_run_stopped_between_its_plateau_and_the_decay_resumes_into_the_same_model(tmp_path):
  c = _plateau_config()
  whole = train.train_and_evaluate(c, str(tmp_path / "whole"))
  decays, _ = _events(str(tmp_path / "whole"))
  assert whole["decays"] == 1
  # The same run capped at the plateau's epoch ends without decaying (no epoch is left)...
  c.train.num_epochs = decays[0]["epoch"]
  cut = train.train_and_evaluate(c, str(tmp_path / "cut"))
  assert cut["decays"] == 0 and not _events(str(tmp_path / "cut"))[0]
  # ...and continued to the full cap, it decays on resuming and ends where the whole run did.
  c.train.num_epochs = 10
  resumed = train.train_and_evaluate(c, str(tmp_path / "cut"))
  assert resumed["decays"] == 1 and resumed["selected"] == whole["selected"]
  assert resumed["steps"] == whole["steps"]
  for k in ("P@1", "P@3", "P@5"):
    assert resumed[k] == whole[k]


def test_decay_needs_validation_and_checkpoints(tmp_path):
  c = _plateau_config()
  c.checkpoint.enabled = False
  with pytest.raises(ValueError, match="decay_patience=1 goes back"):
    train.train_and_evaluate(c, str(tmp_path))


@pytest.mark.parametrize("field, metric", [("checkpoint.best_metric", "P@7"),
                                           ("checkpoint.best_metric", "ndcg@5"),
                                           ("train.target_metric", "precision")])
def test_a_metric_the_evaluations_do_not_report_is_refused_before_training(
    tmp_path, field, metric):
  c = tiny_config()
  c.data.validation_fraction = 0.1
  section, name = field.split(".")
  c[section][name] = metric
  with pytest.raises(ValueError, match=rf"config.{field}='{metric}' is not a metric .* "
                                       r"expected one of .*'nDCG@5'"):
    train.train_and_evaluate(c, str(tmp_path))
  assert not os.listdir(tmp_path)  # Refused before anything was written.


def test_the_text_config_judges_epochs_on_a_metric_it_reports():
  from experiments.configs import text
  from mach_jax import config as config_lib
  c = text.get_config()
  assert c.checkpoint.best_metric == "nDCG@5"
  config_lib.check_loop(c)
