"""Probabilities: the calibration map, the ECE, and Predictor.predict_proba on a model
folder, against answers worked out by hand."""

import json
import os
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax import bundle, calibration
from mach_jax.predictor import Predictor
from tests.helpers import ROOT

V1_XC = os.path.join(ROOT, "tests", "data", "model_v1", "xc")


def test_ece_of_a_known_table():
  # Bin [0.2, 0.267): probabilities .25, .25 with outcomes 1, 0 -> |0.5 - 0.25| = 0.25.
  # Bin [0.933, 1]: .95, .95 with outcomes 1, 1 -> |1 - 0.95| = 0.05. ECE = (2*.25 + 2*.05)/4.
  ece, bins = calibration.expected_calibration_error(
      np.array([[0.25, 0.25], [0.95, 0.95]]), np.array([[1, 0], [1, 1]]), bins=15)
  assert ece == pytest.approx(0.15)
  assert [b["count"] for b in bins] == [2, 2]
  with pytest.raises(ValueError, match="outside"):
    calibration.expected_calibration_error(np.array([[1.5]]), np.array([[1]]))


def test_fit_recovers_a_planted_calibration():
  """Outcomes drawn from sigmoid(logit(p) / 0.5 - 1): the fit finds T = 0.5, b = -1."""
  rng = np.random.default_rng(0)
  p = rng.uniform(0.01, 0.99, size=(20_000, 5))
  truth = calibration.Calibration(temperature=0.5, bias=-1.0)
  y = rng.uniform(size=p.shape) < truth.apply(p)
  fitted = calibration.fit(p, y)
  assert fitted.temperature == pytest.approx(0.5, rel=0.05)
  assert fitted.bias == pytest.approx(-1.0, abs=0.05)
  before = calibration.expected_calibration_error(p, y)[0]
  after = calibration.expected_calibration_error(fitted.apply(p), y)[0]
  assert after < 0.02 < before
  q = 0.3  # inverse: the estimate whose calibrated probability is q.
  assert fitted.apply(fitted.inverse(q)) == pytest.approx(q)


def test_isotonic_fits_a_non_logistic_relation_and_inverts():
  """Relevance jumps from .2 to .9 at p = .1 (a label-share estimate behaves so): Platt's
  sigmoid cannot follow it, the isotonic map can."""
  rng = np.random.default_rng(1)
  p = rng.uniform(0, 0.5, size=(20_000, 4))
  y = rng.uniform(size=p.shape) < np.where(p < 0.1, 0.2, 0.9)
  iso, platt = calibration.fit(p, y, "isotonic"), calibration.fit(p, y, "platt")
  ece = {c.method: calibration.expected_calibration_error(c.apply(p), y)[0]
         for c in (iso, platt)}
  assert ece["isotonic"] < 0.01 < ece["platt"]
  assert np.all(np.diff(iso.apply(np.linspace(0, 1, 101))) >= 0)
  for q in (0.3, 0.85):  # The smallest estimate reaching q, then the map gives >= q.
    assert iso.apply(iso.inverse(q)) >= q - 1e-9
    assert iso.apply(iso.inverse(q) - 1e-3) < q
  again = calibration.Calibration.from_json(iso.to_json())
  np.testing.assert_array_equal(again.apply(p[:5]), iso.apply(p[:5]))


def test_identity_calibration_changes_nothing():
  p = np.array([0.001, 0.2, 0.5, 0.9])
  np.testing.assert_allclose(calibration.Calibration().apply(p), p, rtol=1e-6)


def test_predict_proba_returns_every_class_above_the_threshold(tmp_path):
  folder = tmp_path / "model"
  shutil.copytree(V1_XC, folder)
  p = Predictor.load(str(folder))
  X = sp.random(5, 100, density=0.2, format="csr", random_state=3, dtype=np.float32)
  scores, ids = p.predict_topk(X, k=p.spec.K, estimator="unbiased")  # Every class.
  est = np.clip(scores, 0, 1)
  t = float(np.quantile(est[:, :8], 0.5))  # A threshold that keeps a few per row.
  got = p.predict_proba(X, threshold=t)
  for i, (cls, prob) in enumerate(got):
    want = ids[i][est[i] >= t]
    assert sorted(cls.tolist()) == sorted(want.tolist())
    assert np.all(prob >= t) and np.all(np.diff(prob) <= 0)
  # A saved calibration moves the cut: the same classes as thresholding the estimate at
  # its inverse.
  cal = calibration.Calibration(temperature=0.5, bias=0.3)
  bundle.set_calibration(str(folder), cal.to_json())
  p2 = Predictor.load(str(folder))
  assert p2.calibration == cal
  for i, (cls, prob) in enumerate(p2.predict_proba(X, threshold=t)):
    assert sorted(cls.tolist()) == sorted(ids[i][est[i] >= cal.inverse(t)].tolist())
    np.testing.assert_allclose(prob, cal.apply(np.sort(est[i][est[i] >= cal.inverse(t)])[::-1]))
  with pytest.raises(ValueError, match="threshold"):
    p2.predict_proba(X, threshold=1.0)


def test_a_malformed_calibration_is_refused(tmp_path):
  folder = tmp_path / "model"
  shutil.copytree(V1_XC, folder)
  info = json.load(open(folder / "model.json"))
  info["calibration"] = {"method": "platt", "temperature": -1, "bias": 0}
  json.dump(info, open(folder / "model.json", "w"))
  with pytest.raises(ValueError, match=r"model.json: .*calibration"):
    Predictor.load(str(folder))


def test_the_calibrate_cli_fits_on_the_slice_and_saves_the_map(tmp_path):
  """experiments.calibrate on a run that held out a validation slice: the map is saved in
  the model folder and its report beside it; a folder trained on every point is refused,
  naming the way out."""
  from experiments.bench.fuzz_cli import run_cases
  from mach_jax import train
  from tests.helpers import tiny_config
  c = tiny_config()
  c.data.validation_fraction = 0.1
  c.train.num_epochs = 2
  c.eval.update(every_epochs=1, subset=0)
  train.train_and_evaluate(c, str(tmp_path / "run"))
  shutil.copytree(V1_XC, tmp_path / "all" / "model")  # Trained without a slice.
  ran, all_points, none = run_cases("experiments.calibrate", [
      ["--workdir", str(tmp_path / "run")], ["--workdir", str(tmp_path / "all")],
      ["--workdir", str(tmp_path / "none")]])
  assert ran == (0, ""), ran
  report = json.load(open(tmp_path / "run" / "calibration.json"))
  saved = bundle.read_info(str(tmp_path / "run" / "model"))["calibration"]
  assert saved == report["calibration"][report["chosen"]] and report["num_validation"] > 0
  assert all_points[0] == 1 and "trained on all of its training data" in all_points[1], all_points
  assert none == (1, f"error: --workdir: {tmp_path / 'none' / 'model' / 'model.json'}: not a "
                  "model folder (bundle.export writes one)"), none
