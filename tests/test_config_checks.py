"""Training settings out of range are refused before any data is read, naming the field."""

import os
import pathlib

import pytest

from mach_jax import config as config_lib, train
from tests.helpers import tiny_config


@pytest.mark.parametrize("section, field, value, message", [
    ("train", "batch_size", 0, r"config.train.batch_size=0: expected an integer >= 1"),
    ("eval", "k", 0, r"config.eval.k=0: expected an integer >= 1"),
    ("optimizer", "learning_rate", -1e-3, r"learning_rate=-0.001: expected a finite number"),
    ("optimizer", "learning_rate", float("nan"), r"learning_rate=nan: expected a finite"),
    ("model", "hidden", (0,), r"config.model.hidden=\(0,\): expected one width or more"),
    ("data", "validation_fraction", -0.1, r"validation_fraction=-0.1: expected 0 <= f < 1"),
    ("data", "validation_fraction", 1.0, r"validation_fraction=1.0: expected 0 <= f < 1"),
    ("train", "input_dropout", 1.0, r"config.train.input_dropout=1.0: expected 0 <= p < 1"),
    ("eval", "estimators", ("mean", "foo"), r"config.eval.estimators: \['foo'\] unknown"),
    ("eval", "decode", "beam", r"config.eval.decode='beam': expected one of"),
    # Found by experiments.bench.fuzz_settings (2026-12-08): each ran, or failed deeper
    # naming no setting ("negative dimensions are not allowed", "cannot convert float NaN
    # to integer", an inhomogeneous array inside a checkpoint save).
    ("model", "R", -8, r"config.model.R=-8: expected an integer >= 1 \(0: derived"),
    ("model", "B", 1, r"config.model.B=1: expected an integer >= 2"),
    ("model", "hidden", (), r"config.model.hidden=\(\): expected one width or more"),
    ("model", "input_dim", -2, r"config.model.input_dim=-2: expected 0 \(off\), -1"),
    ("model", "hash_family", "md5", r"config.model.hash_family='md5': expected one of"),
    ("model", "loss", "hinge", r"config.model.loss='hinge': expected one of"),
    ("model", "embedding_bag", "sparse", r"config.model.embedding_bag='sparse': expected"),
    ("optimizer", "weight_decay", -1e-4, r"config.optimizer.weight_decay=-0.0001: expected"),
    ("optimizer", "warmup_fraction", float("nan"), r"warmup_fraction=nan: expected 0 <= f"),
    ("optimizer", "warmup_steps", -3, r"config.optimizer.warmup_steps=-3: expected"),
    ("optimizer", "name", "lamb", r"config.optimizer.name='lamb': expected one of"),
    ("train", "num_epochs", 0, r"config.train.num_epochs=0: expected an integer >= 1"),
    ("train", "max_decays", -1, r"config.train.max_decays=-1: expected an integer >= 0"),
    ("eval", "every_steps", -10, r"config.eval.every_steps=-10: expected an integer >= 0"),
    ("eval", "subset", -1, r"config.eval.subset=-1: expected an integer >= 0"),
    ("eval", "batch_size", 0, r"config.eval.batch_size=0: expected an integer >= 1"),
    ("eval", "min_count", 0, r"config.eval.min_count=0: expected an integer >= 1"),
    ("checkpoint", "keep", 0, r"config.checkpoint.keep=0: expected an integer >= 1"),
    ("checkpoint", "background", "off", r"config.checkpoint.background='off': expected one"),
    ("data", "buffer_size", 0, r"config.data.buffer_size=0: expected an integer >= 1"),
    ("data", "cache_mb", -1, r"config.data.cache_mb=-1: expected a finite number >= 0"),
])
def test_a_value_out_of_range_is_refused_naming_its_field(section, field, value, message):
  """Before: a batch of 0 and H = 0 raised ZeroDivisionError, a negative learning rate
  trained to P@1 .000 without a word, eval.k = 0 complained about 'P@1', and an unknown
  estimator or decoder failed at the first evaluation, an epoch in."""
  c = tiny_config()
  c[section][field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.check_loop(c)


def test_a_run_refuses_it_before_reading_data(tmp_path):
  c = tiny_config()
  c.data.update(name="xc", train=str(tmp_path / "absent.txt"))
  c.train.batch_size = 0
  with pytest.raises(ValueError, match="batch_size=0"):  # Not: absent.txt not found.
    train.train_and_evaluate(c, str(tmp_path / "run"))


def test_a_learning_rate_of_zero_is_allowed():
  c = tiny_config()
  c.optimizer.learning_rate = 0.0  # (Starting from a model folder unchanged: test_train.)
  config_lib.check_loop(c)


def test_an_eval_k_above_the_classes_is_refused_before_training(tmp_path):
  """It was found at the first periodic evaluation, after an epoch: 'k=60 > K=50'."""
  c = tiny_config()
  c.eval.k = 401  # The catalogue has 400 classes.
  with pytest.raises(ValueError, match=r"config.eval.k=401: the data has K=400 classes"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


V1_XC = os.path.join(os.path.dirname(__file__), "data", "model_v1", "xc")  # R=2, B=8, H=8.


def _from_v1(tmp_path):
  c = tiny_config()
  c.data.update(name="xc", train=str(tmp_path / "absent.txt"),  # Never read.
                test=str(tmp_path / "absent_test.txt"))
  c.model.update(R=2, B=8, hidden=(8,))
  c.train.init_from = V1_XC
  return c


def test_a_start_folder_that_matches_passes():
  c = _from_v1(pathlib.Path("/nonexistent"))
  config_lib.check_loop(c)
  c.model.update(R=0, B=0)  # Left to the data: checked once it is read (test_train).
  config_lib.check_loop(c)


@pytest.mark.parametrize("change, message", [
    (dict(B=16), r"config.model.B=16 \(the folder's: 8\)"),
    (dict(R=4, hash_seed=3), r"config.model.R=4 \(the folder's: 2\); "
     r"config.model.hash_seed=3 \(the folder's: 0\)"),
    (dict(hidden=(16,)), r"config.model.hidden=\(16,\) \(the folder's: \(8,\)\)"),
    (dict(input_dim=64), r"config.model.input_dim=64 \(the folder's: 0\)"),
])
def test_a_start_folder_of_another_model_is_refused_before_reading_data(tmp_path, change,
                                                                         message):
  """It was found once the training log had been read (minutes, on a large log)."""
  c = _from_v1(tmp_path)
  c.model.update(**change)
  with pytest.raises(ValueError, match=r"init_from=.*model_v1/xc: its model cannot start "
                     r"this run: .*" + message):
    train.train_and_evaluate(c, str(tmp_path / "run"))


def test_a_missing_start_folder_is_refused_before_reading_data(tmp_path):
  c = _from_v1(tmp_path)
  c.train.init_from = str(tmp_path / "no_such_model")
  with pytest.raises(FileNotFoundError, match=r"no_such_model/model.json: not a model folder"):
    train.train_and_evaluate(c, str(tmp_path / "run"))


@pytest.mark.parametrize("m, k, message", [
    (33, 5, r"config.eval.candidates_m=33: expected 1 <= m <= B=32"),
    (1, 200, r"config.eval.k=200: candidate decoding with candidates_m=1 finds at most \d+ "
     r"classes a point"),
])
def test_candidate_decoding_that_cannot_rank_k_is_refused_before_training(tmp_path, m, k,
                                                                          message):
  """It was found at the first evaluation, an epoch in (a 1M-catalogue epoch: half an
  hour)."""
  c = tiny_config()
  c.eval.update(decode="candidates", candidates_m=m, k=k)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("field, value, message", [
    ("B", 512, r"config.model.B=512: more buckets than the data's K=400 classes"),
    ("min_count", 5, r"config.eval.min_count=5: expected 1 <= min_count <= R=4"),
])
def test_a_setting_beyond_the_data_is_refused_naming_it_before_training(tmp_path, field,
                                                                        value, message):
  """Before: HashSpec's 'B=512 > K=400' (naming no setting); a min_count above R was
  refused by the first evaluation, an epoch in."""
  c = tiny_config()
  (c.model if field == "B" else c.eval)[field] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_the_settings_fuzz_tells_a_refusal_a_run_and_a_silent_change(tmp_path, monkeypatch):
  """experiments.bench.fuzz_settings's oracle on three fixed cases: a value out of range
  refused, a valid one that runs (eval.k = 1 ended in KeyError 'P@5' before 2026-12-08),
  and, with the range checks taken away, a value out of range taken silently."""
  from experiments.bench import fuzz_settings as fs
  from mach_jax import config_checks
  assert fs.check({"train.batch_size": 0}, str(tmp_path)) == "refused"
  assert fs.check({"eval.k": 1, "model.B": 400}, str(tmp_path)) == "accepted"
  monkeypatch.setattr(config_checks, "_ranges", lambda config: ())
  with pytest.raises(fs.SilentChange, match=r"weight_decay.*outside the domain"):
    fs.check({"optimizer.weight_decay": -1e-4}, str(tmp_path))


def test_a_featurizer_setting_out_of_range_is_named_before_a_contradiction(tmp_path):
  """Found by the settings fuzz (seed 6): an unknown weighting beside settings that
  contradict each other was refused for the contradiction, naming another field."""
  from experiments.bench import fuzz_settings as fs
  logs = fs.write_logs(str(tmp_path))
  c = fs.base_config(logs)
  c.data.featurizer.weighting, c.data.validation_fraction = "bm25", 0.0
  with pytest.raises(ValueError, match=r"featurizer.weighting='bm25': expected one of"):
    train.train_and_evaluate(c, str(tmp_path / "run"))


def test_the_settings_fuzz_draws_every_checked_field_and_every_choice():
  """The fuzz's domains are written by hand (its oracle must not be the code it judges):
  a field ``config_checks`` learns to check, or a choice a module adds, fails here until
  the fuzz draws it too."""
  from experiments.bench import fuzz_settings as fs
  from mach_jax import config_checks
  config = config_lib.default_config()
  domains = {**fs.DOMAINS, **fs.TEXT_DOMAINS}
  checked = [f for f, *_ in config_checks._ranges(config)]
  assert [f for f in checked if f not in domains] == []
  differ = {}
  for field, _, choices in config_checks._choices(config):
    values, valid = domains.get(field, ((), lambda v: False))
    drawn = {v for v in values if valid(v)}
    if not set(choices) <= set(values) or drawn != set(choices):  # Each choice drawn, and
      differ[field] = (sorted(choices), sorted(drawn))  # the oracle takes only those.
  assert differ == {}


def test_the_train_cli_prints_a_refusal_alone(tmp_path):
  """A refused setting or a missing file: its message on stderr, exit status 1, no
  traceback (before: twenty lines of the library's frames above it)."""
  import subprocess
  import sys

  from tests.helpers import ROOT
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  for flag, message in (("--config.model.B=-4", "error: config.model.B=-4: expected an "
                         "integer >= 2"),
                        (f"--config.data.train={tmp_path}/none.txt",
                         f"error: config.data.train={tmp_path}/none.txt: no such file")):
    run = subprocess.run([sys.executable, "-m", "experiments.train", "--config",
                          "experiments/configs/bibtex.py", "--workdir", str(tmp_path / "run"),
                          flag], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith(message), run.stderr[-2000:]
    assert "Traceback" not in run.stderr
