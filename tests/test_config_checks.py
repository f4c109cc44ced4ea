"""Training settings out of range are refused before any data is read, naming the field."""

import os

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
