"""Model folders: folders written before the redesign (format 1) still load and answer the
same; the current format round-trips; damaged model.json files are refused clearly."""

import json
import os
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax import bundle
from mach_jax.predictor import Predictor
from mach_jax.search import Searcher
from tests.helpers import ROOT

V1 = os.path.join(ROOT, "tests", "data", "model_v1")


def test_format_1_xc_folder_loads_and_predicts_as_before():
  """tests/data/model_v1/xc was written by the code before the redesign (its expected.json
  holds that code's predictions for the same input)."""
  expected = json.load(open(os.path.join(V1, "xc", "expected.json")))
  p = Predictor.load(os.path.join(V1, "xc"))
  assert p.info["format_version"] == bundle.FORMAT_VERSION and p.info["featurizer"] is None
  X = sp.random(6, 100, density=0.1, format="csr", random_state=expected["X_seed"],
                dtype=np.float32)
  scores, ids = p.predict_topk(X, k=5)
  np.testing.assert_array_equal(ids, expected["ids"])
  # Scores to the last bits only: queries are now padded to a power-of-two batch and width
  # (Predictor.predict_topk), and XLA's sums follow the padded shape.
  np.testing.assert_allclose(scores, np.asarray(expected["scores"], np.float32), rtol=1e-6)


def test_format_1_text_folder_moves_the_featurizer_under_data():
  expected = json.load(open(os.path.join(V1, "text", "expected.json")))
  raw = json.load(open(os.path.join(V1, "text", "model.json")))
  assert "featurizer" in raw["config"] and "format_version" not in raw  # Really format 1.
  s = Searcher.load(os.path.join(V1, "text"),
                    catalogue=os.path.join(V1, "text", "products.tsv"))
  assert s.predictor.config.data.featurizer.num_features == 512
  assert tuple(s.predictor.config.data.featurizer.word_ngrams) == (1, 2)
  hits = s.search(expected["queries"], k=5)
  assert [[h.id for h in row] for row in hits] == expected["ids"]
  np.testing.assert_allclose([[h.score for h in row] for row in hits],
                             np.asarray(expected["scores"], np.float32), rtol=1e-6)


def test_current_format_round_trips(tmp_path):
  folder = tmp_path / "model"
  shutil.copytree(os.path.join(V1, "xc"), folder)
  info, config, params = bundle.load(str(folder))
  out = tmp_path / "again"
  from mach_jax.hashing import HashSpec
  bundle.export(str(out), params, HashSpec.from_dict(info["hash_spec"]), config,
                info["num_features"])
  again = json.load(open(out / "model.json"))
  assert again["format_version"] == bundle.FORMAT_VERSION
  assert bundle.read_info(str(out))["config"] == info["config"]
  X = sp.random(4, 100, density=0.2, format="csr", random_state=1, dtype=np.float32)
  a, b = Predictor.load(str(folder)).predict_topk(X), Predictor.load(str(out)).predict_topk(X)
  np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("mutate, match", [
    (lambda i: i["config"]["model"].update(colour="red"), r"unknown config field 'colour'"),
    (lambda i: i.pop("hash_spec"), r"no 'hash_spec' field"),
    (lambda i: i.update(format_version=99), r"format_version 99"),
])
def test_bad_model_json_is_refused_naming_the_file(tmp_path, mutate, match):
  folder = tmp_path / "model"
  shutil.copytree(os.path.join(V1, "xc"), folder)
  info = json.load(open(folder / "model.json"))
  mutate(info)
  json.dump(info, open(folder / "model.json", "w"))
  with pytest.raises(ValueError, match=match) as e:
    Predictor.load(str(folder))
  assert "model.json" in str(e.value)


def test_model_json_that_is_not_json_names_the_file(tmp_path):
  folder = tmp_path / "model"
  shutil.copytree(os.path.join(V1, "xc"), folder)
  (folder / "model.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"model.json: not valid JSON"):
    Predictor.load(str(folder))
