"""int8 model folders: the row-wise quantization's bound, a quantized folder that loads and
answers as its dequantized table does, and the refusals."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax import bundle, model as model_lib, quantize
from mach_jax.hashing import HashSpec
from mach_jax.predictor import Predictor
from mach_jax.search import Searcher
from tests.helpers import ROOT

V1 = os.path.join(ROOT, "tests", "data", "model_v1")


def test_rows_round_trip_within_half_a_step():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(3, 50, 16)).astype(np.float32) * rng.uniform(0.01, 10, (3, 50, 1))
  table[1, 7] = 0  # An all-zero row.
  table[2, 3, 5] = -4 * np.abs(table[2, 3]).max()  # A row whose extreme is negative.
  q, scale = quantize.quantize_rows(table)
  assert q.dtype == np.int8 and q.shape == table.shape
  assert scale.dtype == np.float32 and scale.shape == (3, 50, 1)
  assert q.min() >= -127 and q.max() <= 127
  assert scale[1, 7, 0] == 1 and not q[1, 7].any()
  assert q[2, 3, 5] == -127  # The row's largest |value| maps to the end of the range.
  back = quantize.dequantize_rows(q, scale)
  assert np.all(np.abs(back - table) <= scale / 2 * (1 + 1e-6))
  with pytest.raises(ValueError, match="NaN or inf"):
    quantize.quantize_rows(np.array([[1.0, np.nan]]))
  with pytest.raises(ValueError, match=r"expected a table \[..., D, H\]"):
    quantize.quantize_rows(np.ones(4))


def _table(params):
  return np.asarray(params["reps"][model_lib.TABLE])


def test_a_quantized_folder_stores_int8_and_answers_as_its_dequantized_table(tmp_path):
  src = tmp_path / "model"
  shutil.copytree(os.path.join(V1, "text"), src)
  calibration = {"method": "platt", "temperature": 2.0, "bias": 0.5}
  bundle.set_calibration(str(src), calibration)
  out = tmp_path / "int8"
  before, after = bundle.quantize(str(src), str(out))
  assert before == bundle.folder_bytes(str(src)) and after == bundle.folder_bytes(str(out))

  raw = json.load(open(out / "model.json"))
  assert raw["table_storage"] == "int8" and raw["calibration"] == calibration
  import orbax.checkpoint as ocp

  from mach_jax import array_store
  with ocp.Checkpointer(array_store.arrays_handler()) as ckptr:
    meta = ckptr.metadata(str(out / "params"))
  tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
  assert tree["reps"][model_lib.TABLE].dtype == np.int8
  assert tree["reps"][quantize.SCALE].shape == tree["reps"][model_lib.TABLE].shape[:2] + (1,)

  info, config, original = bundle.load(str(src))
  info8, config8, params8 = bundle.load(str(out))
  assert quantize.SCALE not in params8["reps"]  # Read back as the float32 layout.
  assert config8.to_dict() == config.to_dict()
  q, scale = quantize.quantize_rows(_table(original))
  np.testing.assert_array_equal(_table(params8), quantize.dequantize_rows(q, scale))
  assert np.all(np.abs(_table(params8) - _table(original)) <= scale / 2 * (1 + 1e-6))
  for key in ("output", "embedding_bias"):  # Every other array exactly as it was.
    jax.tree.map(np.testing.assert_array_equal, params8["reps"][key], original["reps"][key])

  # The Searcher reads the new folder (its featurizer and catalogue) and ranks as a
  # Predictor over the dequantized table does.
  products = os.path.join(V1, "text", "products.tsv")
  queries = json.load(open(os.path.join(V1, "text", "expected.json")))["queries"]
  searcher = Searcher.load(str(out), catalogue=products)
  assert searcher.predictor.info["table_storage"] == "int8"
  hits = searcher.search(queries, k=5)
  X = searcher.featurizer.transform(queries)
  scores, ids = Predictor(str(src), info, config, params8).predict_topk(X, k=5)
  assert [[h.id for h in row] for row in hits] == ids.tolist()
  np.testing.assert_allclose([[h.score for h in row] for row in hits], scores, rtol=1e-6)


def test_a_quantized_folder_appears_with_its_calibration(tmp_path, monkeypatch):
  """Killed as soon as the int8 folder is in place, quantize leaves it calibrated (before:
  the calibration was written into it afterwards, so such a kill left a folder that loads
  and answers without it, and the rerun was refused: the folder exists)."""
  src = tmp_path / "model"
  shutil.copytree(os.path.join(V1, "xc"), src)
  calibration = {"method": "platt", "temperature": 2.0, "bias": 0.5}
  bundle.set_calibration(str(src), calibration)
  rename = os.rename

  def killed_after(a, b):
    rename(a, b)
    if b == str(tmp_path / "int8"):
      raise KeyboardInterrupt("killed")

  monkeypatch.setattr(bundle.os, "rename", killed_after)
  with pytest.raises(KeyboardInterrupt):
    bundle.quantize(str(src), str(tmp_path / "int8"))
  assert json.load(open(tmp_path / "int8" / "model.json"))["calibration"] == calibration


def test_xc_folder_quantizes_and_its_answers_stay_close(tmp_path):
  out = tmp_path / "int8"
  bundle.quantize(os.path.join(V1, "xc"), str(out))
  X = sp.random(64, 100, density=0.1, format="csr", random_state=3, dtype=np.float32)
  s32, i32 = Predictor.load(os.path.join(V1, "xc")).predict_topk(X, k=5)
  s8, i8 = Predictor.load(str(out)).predict_topk(X, k=5)
  assert np.mean(i8[:, 0] == i32[:, 0]) >= 0.9
  np.testing.assert_allclose(s8, s32, atol=0.05)


def test_quantize_refusals(tmp_path):
  out = tmp_path / "int8"
  bundle.quantize(os.path.join(V1, "xc"), str(out))
  with pytest.raises(FileExistsError, match="exists; pass a new folder"):
    bundle.quantize(os.path.join(V1, "xc"), str(out))
  with pytest.raises(ValueError, match="stored as int8 already"):
    bundle.quantize(str(out), str(tmp_path / "again"))
  info, config, params = bundle.load(os.path.join(V1, "xc"))
  with pytest.raises(ValueError, match="start a run from the float32 folder"):
    bundle.load_params_like(str(out), params, HashSpec.from_dict(info["hash_spec"]),
                            info["num_features"])
  raw = json.load(open(out / "model.json"))
  raw["table_storage"] = "int4"
  json.dump(raw, open(out / "model.json", "w"))
  with pytest.raises(ValueError, match=r"model.json.*table_storage 'int4'"):
    bundle.load(str(out))


def test_quantize_cli(tmp_path):
  out = subprocess.run([sys.executable, "-m", "experiments.quantize", "--model",
                        os.path.join(V1, "xc"), "--out", str(tmp_path / "q")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "MiB ->" in out.stdout
  assert bundle.read_info(str(tmp_path / "q"))["table_storage"] == "int8"
