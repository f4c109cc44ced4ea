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
    ("model", "hidden", (0,), r"config.model.hidden=\(0,\): expected widths >= 1"),
    ("data", "validation_fraction", -0.1, r"validation_fraction=-0.1: expected 0 <= f < 1"),
    ("data", "validation_fraction", 1.0, r"validation_fraction=1.0: expected 0 <= f < 1"),
    ("train", "input_dropout", 1.0, r"config.train.input_dropout=1.0: expected 0 <= p < 1"),
    ("eval", "estimators", ("mean", "foo"), r"config.eval.estimators: \['foo'\] unknown"),
    ("eval", "decode", "beam", r"config.eval.decode='beam': expected one of"),
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
