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
  # Scores to the last bits only: the code that wrote expected.json padded queries to
  # another batch and width than Predictor.predict_topk does, and XLA's sums follow the
  # padded shape.
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


def test_a_search_up_to_the_candidates_slots_lists_each_product_once():
  """The text folder decodes from candidates (R = 2 repetitions, m = 2 buckets of at most
  S = 19 products): k is bounded by those 76 slots, and a query whose slots hold fewer
  distinct products gets a shorter list (before: duplicates, and the id -1 titled as the
  catalogue's last product)."""
  s = Searcher.load(os.path.join(V1, "text"), catalogue=os.path.join(V1, "text", "products.tsv"))
  assert s.predictor.max_k() == 76 and s.predictor.max_k(method="exact") == 200
  ids = [h.id for h in s.search("usb c", k=76)[0]]
  assert len(set(ids)) == len(ids) < 76 and min(ids) >= 0
  assert ids[:10] == [h.id for h in s.search("usb c", k=10)[0]]
  with pytest.raises(ValueError, match=r"k=77: .*1 <= k <= 76.*raise m, or decode exactly"):
    s.search("usb c", k=77)
  assert len(s.search("usb c", k=100, method="exact")[0]) == 100
  s.search(["usb c"] * 3, k=5, batch_size=4)  # Another batch size: its own decoder...
  indices = {id(d.index) for d in s.predictor._decoders.values() if d.index is not None}
  assert len(s.predictor._decoders) == 3 and len(indices) == 1  # ...over the same index.
  # Probabilities over the candidates: each class once, no empty slot (below the
  # calibration's floor of 1e-4 every slot passed, the empty ones as -1; such a threshold
  # is now refused unless the estimate is asked for).
  X = s.featurizer.transform(["usb c", "zz"])
  for ids, probs in s.predictor.predict_proba(X, threshold=1e-6, calibrated=False):
    assert len(set(ids)) == len(ids) < 76 and ids.min() >= 0 and (probs >= 1e-6).all()
  with pytest.raises(ValueError, match=r"threshold=1e-06: expected a probability in "
                     r"\(0.0001, 1\); calibrated probabilities are at least"):
    s.predictor.predict_proba(X, threshold=1e-6)


def test_a_moved_text_folder_is_searched_with_its_catalogue_passed_or_none():
  """The folder's config names the catalogue where it was trained (/tmp/fx/...)."""
  folder = os.path.join(V1, "text")
  with pytest.raises(FileNotFoundError, match=r"products.tsv: no such file: pass its path "
                     r"\(catalogue=..., --catalogue PATH\), or '' for hits without titles"):
    Searcher.load(folder)
  bare = Searcher.load(folder, catalogue="").search("usb c", k=3)[0]
  titled = Searcher.load(folder, catalogue=os.path.join(folder, "products.tsv"))
  assert [h.id for h in bare] == [h.id for h in titled.search("usb c", k=3)[0]]
  assert all(h.title == "" for h in bare) and titled.search("usb c", k=1)[0][0].title


def test_non_finite_features_are_refused_naming_their_rows():
  """A NaN ranked classes arbitrarily (scores NaN, classes 0, 1, 2...)."""
  p = Predictor.load(os.path.join(V1, "xc"))
  X = sp.random(4, 100, density=0.2, format="csr", random_state=0, dtype=np.float32)
  X.data[X.indptr[1]], X.data[X.indptr[3]] = np.nan, -np.inf
  with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in rows \[1, 3\]"):
    p.predict_topk(X, k=3)
  with pytest.raises(ValueError, match=r"in rows \[1, 3\]"):
    p.predict_proba(X, threshold=0.5)


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


def test_a_widened_model_keeps_old_buckets_and_answers_for_new_ids(tmp_path):
  """A catalogue grown from K = 60 to 75 with no retraining: the folder loads, the 60 old
  ids keep their buckets and their scores, the 15 new ones are scored from their buckets."""
  wide = tmp_path / "wide"
  bundle.widen(os.path.join(V1, "xc"), str(wide), 75)
  a, b = Predictor.load(os.path.join(V1, "xc")), Predictor.load(str(wide))
  assert (a.spec.K, b.spec.K) == (60, 75)
  np.testing.assert_array_equal(b.spec.buckets(np.arange(60)), a.spec.buckets(np.arange(60)))
  X = sp.random(4, 100, density=0.2, format="csr", random_state=2, dtype=np.float32)
  sa, ia = a.predict_topk(X, k=60, estimator="mean")
  sb, ib = b.predict_topk(X, k=75, estimator="mean")
  buckets = b.spec.buckets(np.arange(75))  # [R, K]
  twins = 0
  for row in range(4):
    old = dict(zip(ia[row].tolist(), sa[row].tolist()))
    new = dict(zip(ib[row].tolist(), sb[row].tolist()))
    assert sorted(new) == list(range(75))
    for c in range(60):
      assert new[c] == pytest.approx(old[c], rel=1e-6)
    for c in range(60, 75):  # A new id scores as an old id with the same buckets would.
      twin = [o for o in range(60) if (buckets[:, o] == buckets[:, c]).all()]
      if twin:
        assert new[c] == pytest.approx(old[twin[0]], rel=1e-6)
        twins += 1
  assert twins > 0  # R = 2, B = 8: 64 bucket pairs for 75 ids, so some new ids have twins.
  with pytest.raises(ValueError, match="needs more than"):
    bundle.widen(os.path.join(V1, "xc"), str(tmp_path / "small"), 50)


def test_a_failed_widening_leaves_no_folder_and_a_rerun_writes_it(tmp_path, monkeypatch):
  """A full disk while the folder is copied (before: the copy was made at ``out`` itself,
  so a failure left half a folder there, and the rerun was refused: ``out`` exists)."""
  import errno
  copy = shutil.copyfile
  calls = []

  def full(src, dst, *args, **kwargs):
    calls.append(src)
    if len(calls) == 3:
      raise OSError(errno.ENOSPC, "No space left on device")
    return copy(src, dst, *args, **kwargs)

  monkeypatch.setattr(shutil, "copyfile", full)
  with pytest.raises(OSError, match=r"wide could not be written .*No space left.*widen "
                     r"again") as e:
    bundle.widen(os.path.join(V1, "xc"), str(tmp_path / "wide"), 75)
  assert e.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert os.listdir(tmp_path) == []
  bundle.widen(os.path.join(V1, "xc"), str(tmp_path / "wide"), 75)
  assert os.listdir(tmp_path) == ["wide"] and Predictor.load(str(tmp_path / "wide")).spec.K == 75


def test_a_balanced_hash_cannot_be_widened():
  from mach_jax.hashing import HashSpec
  with pytest.raises(ValueError, match="'balanced' hash assigns buckets by K"):
    HashSpec("balanced", K=100, B=8, R=2).widened(200)


def test_the_widen_cli_grows_a_text_model_over_a_new_catalogue_and_search_shows_it(tmp_path):
  """K from the grown catalogue's lines, every line checked before copying, the catalogue
  recorded in the new folder, so the Searcher shows the new products' titles by default."""
  from experiments.bench.fuzz_cli import run_cases
  lines = open(os.path.join(V1, "text", "products.tsv")).read().splitlines()
  grown = tmp_path / "grown.tsv"
  grown.write_text("\n".join(lines + [f"{200 + i}\tnew product {i}" for i in range(5)]) + "\n")
  bad = tmp_path / "bad.tsv"
  bad.write_text("\n".join(lines + ["201\tan id skipped"]) + "\n")
  model = ["--model", os.path.join(V1, "text")]
  refused, small, ran = run_cases("experiments.widen", [
      [*model, "--out", str(tmp_path / "no"), "--catalogue", str(bad)],
      [*model, "--out", str(tmp_path / "no"), "--num_classes", "100"],
      [*model, "--out", str(tmp_path / "wide"), "--catalogue", str(grown)]])
  assert refused == (1, f"error: --catalogue: {bad}:201: id 201 outside [0, 201)"), refused
  assert small[0] == 1 and small[1].startswith("error: K=100: a widened catalogue needs more")
  assert ran == (0, "") and not os.path.exists(tmp_path / "no"), ran
  searcher = Searcher.load(str(tmp_path / "wide"))
  assert searcher.predictor.spec.K == 205 and searcher.titles[203] == "new product 3"
  hits = searcher.search("new product", k=205, method="exact")[0]
  assert sorted(h.id for h in hits) == list(range(205))  # New ids answered too.


@pytest.mark.parametrize("method", ["exact", "candidates"])
def test_a_few_rows_in_one_jitted_call_equal_the_batched_path(method):
  p = Predictor.load(os.path.join(V1, "xc"))
  X = sp.random(3, 100, density=0.1, format="csr", random_state=1, dtype=np.float32)
  fused = p.predict_topk(X, k=5, method=method)  # 3 rows: padded to 4, one call.
  assert len(p._fused) == 1
  batched = p.predict_topk(X, k=5, method=method, batch_size=p.config.eval.batch_size)
  np.testing.assert_array_equal(fused[1], batched[1])
  np.testing.assert_allclose(fused[0], batched[0], rtol=1e-6)


def test_warm_up_compiles_every_single_query_width_ahead():
  p = Predictor.load(os.path.join(V1, "xc"))
  assert p.warm_up(k=5, max_nnz=64) == 5  # Widths 32, 40, 48, 56 and 64.
  (fused,) = p._fused.values()
  compiled = fused._cache_size()
  assert compiled == 5
  for nnz in (1, 20, 33, 41, 64):  # Every query up to 64 nonzeros finds its program compiled.
    X = sp.csr_matrix((np.ones(nnz, np.float32), np.arange(nnz), [0, nnz]), shape=(1, 100))
    p.predict_topk(X, k=5)
  assert fused._cache_size() == compiled
  X = sp.csr_matrix((np.ones(65, np.float32), np.arange(65), [0, 65]), shape=(1, 100))
  p.predict_topk(X, k=5)  # Wider: compiled when it comes.
  assert fused._cache_size() == compiled + 1


def test_a_query_pays_at_most_a_quarter_of_padding():
  from mach_jax.predictor import SMALL_BATCH_MIN_NNZ, query_width
  for nnz in range(0, 5000):
    w = query_width(nnz)
    assert w >= max(nnz, SMALL_BATCH_MIN_NNZ)
    assert w <= max(1.25 * nnz, SMALL_BATCH_MIN_NNZ)


def test_a_model_trained_with_sequential_repetitions_is_served_side_by_side():
  """Sequential repetitions are a training-memory choice: the Predictor runs the
  repetitions side by side (faster for a single query) and answers the same."""
  info, config, params = bundle.load(os.path.join(V1, "xc"))
  config.model.sequential_reps = True
  p = Predictor(os.path.join(V1, "xc"), info, config, params)
  assert p.config.model.sequential_reps and not p.parts.model.sequential
  X = sp.random(3, 100, density=0.1, format="csr", random_state=2, dtype=np.float32)
  a, b = p.predict_topk(X, k=5), Predictor.load(os.path.join(V1, "xc")).predict_topk(X, k=5)
  np.testing.assert_array_equal(a[1], b[1])
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6)


def test_the_served_feature_major_table_answers_as_the_table_as_trained():
  """The Predictor serves the input table feature-major ([D, R * H]); both its paths answer
  as the forward pass over the table as trained ([R, D, H]) does."""
  served = Predictor.load(os.path.join(V1, "xc"))
  trained = Predictor.load(os.path.join(V1, "xc"), feature_major=False)
  R, D, H = trained.params["reps"]["embedding"].shape
  assert served.feature_major and not trained.feature_major
  assert served.params["reps"]["embedding"].shape == (D, R * H)
  X = sp.random(40, 100, density=0.1, format="csr", random_state=3, dtype=np.float32)
  assert served.config.eval.batch_size > 2
  for rows, batch_size in ((X[:2], 2), (X, served.config.eval.batch_size)):  # Fused; batched.
    a = served.predict_topk(rows, k=5, batch_size=batch_size)
    b = trained.predict_topk(rows, k=5, batch_size=batch_size)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=-3), r"batch_size=-3: expected an integer >= 1, or None"),
    (dict(batch_size=0), r"batch_size=0: expected"),  # (Taken as the default before.)
    (dict(method="candidates", m=0), r"m=0: expected 1 <= m <= B=8"),  # (Likewise.)
])
def test_predict_settings_out_of_range_are_refused(kwargs, message):
  """Found probing the Predictor as the settings fuzz probes training (2026-12-08): a
  negative batch failed inside the decoder naming a memory budget; 0 was read as None."""
  p = Predictor.load(os.path.join(V1, "xc"))
  X = sp.random(3, 100, density=0.1, format="csr", random_state=0, dtype=np.float32)
  with pytest.raises(ValueError, match=message):
    p.predict_topk(X, k=5, **kwargs)
