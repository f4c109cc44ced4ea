"""The text featurizer: what training and serving share."""

import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax.data.text import TextFeaturizer


def test_rows_are_unit_norm_sorted_and_deterministic():
  f = TextFeaturizer(num_features=1 << 16)
  texts = ["usb c charger 65w", "USB C charger 65W", "red sofa", "a"]
  X = f.transform(texts)
  assert X.shape == (4, 1 << 16) and X.dtype == np.float32
  np.testing.assert_allclose(np.asarray(X.multiply(X).sum(axis=1)).ravel(), 1.0, rtol=1e-5)
  assert X.has_sorted_indices
  assert (X[0] != X[1]).nnz == 0  # Lower-cased.
  assert (f.transform(texts) != X).nnz == 0
  assert X[3].nnz > 0  # Single characters are words ("usb c", "pro 3").


def test_word_and_char_features_both_count():
  f = TextFeaturizer(num_features=1 << 18)
  words = TextFeaturizer(num_features=1 << 18, char_ngrams=(0, 0)).transform(["usb charger"])
  chars = TextFeaturizer(num_features=1 << 18, word_ngrams=(0, 0)).transform(["usb charger"])
  both = f.transform(["usb charger"])
  assert words.nnz == 3  # usb, charger, "usb charger".
  assert chars.nnz > words.nnz
  assert set(both.indices) == set(words.indices) | set(chars.indices)


def test_misspelling_keeps_trigram_overlap():
  f = TextFeaturizer(num_features=1 << 18)
  X = f.transform(["bluetooth headphones", "bluetoth headphnes", "garden hose"])
  sim = (X @ X.T).toarray()
  assert sim[0, 1] > 0.5 > sim[0, 2]


def test_log_weighting_damps_repeats():
  X_log = TextFeaturizer(weighting="log", char_ngrams=(0, 0)).transform(["usb usb usb c"])
  X_tf = TextFeaturizer(weighting="tf", char_ngrams=(0, 0)).transform(["usb usb usb c"])
  assert X_log.data.max() < X_tf.data.max()


def test_empty_and_symbol_only_texts_give_empty_or_valid_rows():
  X = TextFeaturizer().transform(["", "   ", "!!"])
  assert X.getnnz(axis=1)[:2].tolist() == [0, 0]
  assert np.isfinite(X.data).all()


def test_roundtrip_through_dict():
  f = TextFeaturizer(num_features=1000, word_ngrams=(1, 1), char_ngrams=(2, 4),
                     weighting="tf", char_weight=0.5, max_chars=50)
  g = TextFeaturizer.from_dict(f.to_dict())
  assert g == f
  assert (g.transform(["abc def"]) != f.transform(["abc def"])).nnz == 0


def test_too_long_text_and_non_string_raise_with_origin():
  f = TextFeaturizer(max_chars=20)
  with pytest.raises(ValueError, match=r"q.tsv:7: text of 21 characters exceeds"):
    f.transform(["x" * 21], where=["q.tsv:7"])
  with pytest.raises(TypeError, match=r"texts\[1\]: expected a str"):
    f.transform(["ok", None])


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_features=0), "num_features"), (dict(weighting="idf"), "weighting"),
    (dict(word_ngrams=(2, 1)), "word_ngrams"), (dict(word_ngrams=(0, 0), char_ngrams=(0, 0)),
                                                "both disabled"),
    (dict(char_weight=float("nan")), r"char_weight=nan: expected a finite number >= 0"),
    (dict(char_weight=-0.5), r"char_weight=-0.5: expected")])  # (Taken before 2026-12-08.)
def test_bad_settings_name_the_setting(kwargs, match):
  with pytest.raises(ValueError, match=match):
    TextFeaturizer(**kwargs)


def test_idf_weights_rare_dimensions_up_and_round_trips():
  f = TextFeaturizer(num_features=1 << 12, word_ngrams=(1, 1), char_ngrams=(0, 0))
  texts = ["usb charger", "usb cable", "usb hub", "red sofa"]
  fitted = f.fit_idf([texts[:2], texts[2:]])
  assert fitted.idf.shape == (1 << 12,) and fitted.idf.dtype == np.float32
  usb, sofa = (f.transform([w]).indices[0] for w in ("usb", "sofa"))
  np.testing.assert_allclose(fitted.idf[usb], np.log(5 / 4) + 1, rtol=1e-6)
  np.testing.assert_allclose(fitted.idf[sofa], np.log(5 / 2) + 1, rtol=1e-6)
  X = fitted.transform(["usb sofa"])
  row = dict(zip(X.indices, X.data))
  assert row[sofa] > row[usb]  # Equal counts: the rarer word weighs more.
  np.testing.assert_allclose(np.sqrt((X.data ** 2).sum()), 1.0, rtol=1e-6)
  again = TextFeaturizer.from_dict(fitted.to_dict(), idf=fitted.idf)
  assert (again.transform(texts) != fitted.transform(texts)).nnz == 0
  with pytest.raises(ValueError, match="settings say idf=True"):
    TextFeaturizer.from_dict(fitted.to_dict())
  with pytest.raises(ValueError, match="expected \\(4096,\\)"):
    TextFeaturizer(num_features=1 << 12, idf=np.ones(3, np.float32))


def reference_transform(f: TextFeaturizer, texts) -> sp.csr_matrix:
  """The featurizer as scikit-learn's HashingVectorizer per n-gram kind and scipy's sparse
  arithmetic compute it: what ``transform`` must give bit for bit."""
  from sklearn.feature_extraction.text import HashingVectorizer
  common = dict(n_features=f.num_features, alternate_sign=False, norm=None, dtype=np.float32)
  X = None
  for kind, ngrams, weight in (("word", f.word_ngrams, 1.0),
                               ("char_wb", f.char_ngrams, f.char_weight)):
    if ngrams == (0, 0):
      continue
    extra = {"token_pattern": r"(?u)\b\w+\b"} if kind == "word" else {}
    block = HashingVectorizer(analyzer=kind, ngram_range=ngrams, **common, **extra
                              ).transform(texts) * np.float32(weight)
    X = block if X is None else X + block
  X = sp.csr_matrix(X, dtype=np.float32)
  X.sum_duplicates()
  if f.weighting == "log":
    X.data = np.log1p(X.data)
  if f.idf is not None:
    X.data *= f.idf[X.indices]
  norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1), np.float64).ravel())
  X.data /= np.repeat(np.where(norms > 0, norms, 1.0), np.diff(X.indptr)).astype(np.float32)
  return X


@pytest.mark.parametrize("kwargs", [
    {}, {"char_ngrams": (3, 5)}, {"char_ngrams": (0, 0)},
    {"word_ngrams": (0, 0), "char_ngrams": (2, 4), "char_weight": 0.5},
    {"char_weight": 0.3, "weighting": "tf"},
    {"num_features": 1000, "word_ngrams": (1, 3), "char_ngrams": (1, 2), "char_weight": 2.0}])
@pytest.mark.parametrize("idf", [False, True])
def test_transform_equals_the_vectorizers_bit_for_bit(kwargs, idf):
  # A few rows are hashed in Python, more by scikit-learn's hasher: both give the
  # reference's every index and value exactly, at every row count across the switch.
  words = ["usb", "C", "charger", "Straße", "東京", "😀", "pro", "3", "!!", "a-b", "usb"]
  rng = np.random.default_rng(0)
  texts = ["", "  ", "!!", "x" * 300] + [
      " ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(40)]
  f = TextFeaturizer(**kwargs)
  if idf:
    f = f.fit_idf([texts[::2]])
  for n in (1, 2, 8, 9, len(texts)):
    for start in (0, len(texts) - n):
      part = texts[start:start + n]
      got, want = f.transform(part), reference_transform(f, part)
      assert got.has_sorted_indices and got.shape == want.shape
      np.testing.assert_array_equal(got.indptr, want.indptr)
      np.testing.assert_array_equal(got.indices, want.indices)
      np.testing.assert_array_equal(got.data, want.data)


def _random_text(rng, max_len):
  """Code points from ASCII, Latin-1, combining marks, Greek, CJK, emoji and the odd
  separators (NBSP, U+2028, zero width space, NUL, tab), surrogates excluded."""
  blocks = [(0x20, 0x7f), (0x00, 0x20), (0xa0, 0x180), (0x300, 0x370), (0x370, 0x400),
            (0x2000, 0x2030), (0x4e00, 0x4e40), (0x1f600, 0x1f640)]
  lo, hi = np.array(blocks).T
  pick = rng.integers(0, len(blocks), size=rng.integers(0, max_len + 1))
  return "".join(chr(int(rng.integers(lo[b], hi[b]))) for b in pick)


@pytest.mark.parametrize("kwargs", [{}, {"char_ngrams": (3, 5)},
                                    {"char_weight": 0.3, "word_ngrams": (1, 3)}])
def test_random_unicode_gives_the_vectorizers_bits_on_both_paths(kwargs):
  """A fuzzer over code points: the few-row path (Python hashing) and the many-row path
  (scikit-learn's hasher) both give the reference's bits, row by row."""
  rng = np.random.default_rng(7)
  texts = [_random_text(rng, 40) for _ in range(300)]
  f = TextFeaturizer(**kwargs)
  want = reference_transform(f, texts)
  many = f.transform(texts)
  for X in (many, sp.vstack([f.transform(texts[i:i + 3]) for i in range(0, len(texts), 3)])):
    X = sp.csr_matrix(X)
    np.testing.assert_array_equal(X.indptr, want.indptr)
    np.testing.assert_array_equal(X.indices, want.indices)
    np.testing.assert_array_equal(X.data, want.data)


@pytest.mark.parametrize("n", [1, 20])  # The Python path and the hasher's.
def test_a_lone_surrogate_is_refused_naming_its_text(n):
  texts = ["usb c"] * n + ["caf\udce9 latte"]
  with pytest.raises(ValueError, match=rf"query {n + 1}: not encodable as UTF-8"):
    TextFeaturizer().transform(texts, where=[f"query {i + 1}" for i in range(n + 1)])
  with pytest.raises(ValueError, match=rf"texts\[{n}\]: not encodable"):
    TextFeaturizer().transform(texts)
