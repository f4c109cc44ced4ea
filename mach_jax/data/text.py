"""Query text to hashed sparse features: the one function training and serving share.

A query becomes word unigrams and bigrams plus character trigrams (within word boundaries,
so ``"usb c"`` gives ``" us"``, ``"usb"``, ``"sb "``, ``" c "``), each hashed into ``D``
dimensions as scikit-learn's ``HashingVectorizer`` hashes them (its analyzers; signed 32-bit
murmur3, stable across versions; no vocabulary to store, so unseen words still land somewhere
meaningful through their trigrams). Counts become tf or log(1 + tf) weights and each row is
L2-normalised. A query or a few are hashed in Python, cheaper than the hasher's per-call
cost; more rows go through its compiled loop; the same bits either way (tests/test_text.py).

Why these choices: product queries are a few words, often misspelt ("chager"), so word
features alone miss most typos while character trigrams still overlap with the right
title; bigrams keep "usb c" apart from "c usb cable". Single characters and digits count as
words (the default scikit-learn token pattern drops "c" in "usb c" and "3" in "pro 3").

Optionally (``idf``) each hashed dimension is weighted by its inverse document frequency
over the training text, log((1 + N) / (1 + df)) + 1 as in scikit-learn's smooth idf, after
the tf weighting and before the normalisation: the tf-idf features the field's XC sets use.
The idf vector is fitted once (``fit_idf``) and saved beside the settings.

The settings are a plain dict saved in the model folder (``model.json``, the idf vector as
``featurizer_idf.npy``), and ``TextFeaturizer.from_dict`` rebuilds exactly the same function
for serving.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

WEIGHTINGS = ("tf", "log")
_FEW_ROWS = 8  # Up to this many texts are hashed in Python (_hashed_counts).


@dataclasses.dataclass(frozen=True)
class TextFeaturizer:
  """Hashed word and character n-gram features of short texts.

  Attributes:
    num_features: D, the hashed dimension (shared by words and trigrams).
    word_ngrams: (min, max) word n-gram lengths; (0, 0) disables word features.
    char_ngrams: (min, max) character n-gram lengths inside word boundaries; (0, 0)
      disables them.
    weighting: 'tf' (raw counts) or 'log' (log(1 + count)), before L2 normalisation; the
      count of a hashed dimension is its word count plus ``char_weight`` times its trigram
      count (a word and a trigram may collide in one dimension).
    char_weight: scale of the character counts against the word counts (1.0: equal footing
      per n-gram).
    max_chars: longer texts are refused with an error that says where they came from
      (a query of 100K characters is a bug upstream, not a query).
    idf: float32 [D] inverse document frequencies (``fit_idf``), or None for none.
  """

  num_features: int = 1 << 18
  word_ngrams: tuple[int, int] = (1, 2)
  char_ngrams: tuple[int, int] = (3, 3)
  weighting: str = "log"
  char_weight: float = 1.0
  max_chars: int = 10_000
  idf: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

  def __post_init__(self):
    if self.num_features < 1:
      raise ValueError(f"featurizer.num_features={self.num_features}: must be >= 1")
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"featurizer.weighting={self.weighting!r}: expected one of {WEIGHTINGS}")
    for name in ("word_ngrams", "char_ngrams"):
      lo, hi = getattr(self, name)
      if not (0 <= lo <= hi) or (lo == 0) != (hi == 0):
        raise ValueError(f"featurizer.{name}={(lo, hi)}: expected (0, 0) or 1 <= min <= max")
      object.__setattr__(self, name, (int(lo), int(hi)))
    if self.word_ngrams == (0, 0) and self.char_ngrams == (0, 0):
      raise ValueError("featurizer: word_ngrams and char_ngrams are both disabled")
    if not (math.isfinite(self.char_weight) and self.char_weight >= 0):  # (NaN: NaN features.)
      raise ValueError(f"featurizer.char_weight={self.char_weight}: expected a finite number "
                       ">= 0 (char_ngrams=(0, 0) leaves character n-grams out)")
    if self.max_chars < 1:
      raise ValueError(f"featurizer.max_chars={self.max_chars}: must be >= 1")
    if self.idf is not None and np.shape(self.idf) != (self.num_features,):
      raise ValueError(f"featurizer idf has shape {np.shape(self.idf)}; expected "
                       f"({self.num_features},), one weight per hashed dimension")
    analyzers, hasher = self._make_vectorizers()
    object.__setattr__(self, "_analyzers", analyzers)
    object.__setattr__(self, "_hasher", hasher)

  def _make_vectorizers(self):
    """(weight, analyzer) per enabled n-gram kind, and the hasher of their n-grams: the
    analyzers and the hashing of scikit-learn's ``HashingVectorizer`` (which is a
    ``FeatureHasher`` over its analyzer's n-grams), applied here once to all of them."""
    from sklearn.feature_extraction import FeatureHasher  # Heavy import: lazy.
    from sklearn.feature_extraction.text import HashingVectorizer
    common = dict(n_features=self.num_features, alternate_sign=False, norm=None,
                  lowercase=True, dtype=np.float32)
    out = []
    if self.word_ngrams != (0, 0):
      out.append((1.0, HashingVectorizer(analyzer="word", ngram_range=self.word_ngrams,
                                         token_pattern=r"(?u)\b\w+\b", **common)))
    if self.char_ngrams != (0, 0):
      out.append((self.char_weight, HashingVectorizer(analyzer="char_wb",
                                                      ngram_range=self.char_ngrams, **common)))
    hasher = FeatureHasher(n_features=self.num_features, input_type="string",
                           alternate_sign=False, dtype=np.float32)
    return [(weight, v.build_analyzer()) for weight, v in out], hasher

  def to_dict(self) -> dict[str, Any]:
    """The settings as JSON; ``idf`` says whether an idf vector goes with them."""
    return {"kind": "hashed_text", "num_features": self.num_features,
            "word_ngrams": list(self.word_ngrams), "char_ngrams": list(self.char_ngrams),
            "weighting": self.weighting, "char_weight": self.char_weight,
            "max_chars": self.max_chars, "idf": self.idf is not None}

  @classmethod
  def from_dict(cls, d, idf: np.ndarray | None = None) -> "TextFeaturizer":
    """The featurizer of ``to_dict``'s settings, with its idf vector when they name one."""
    d = dict(d)
    kind = d.pop("kind", "hashed_text")
    if kind != "hashed_text":
      raise ValueError(f"featurizer kind {kind!r}: this library knows 'hashed_text' only")
    if d.get("idf", False) != (idf is not None):
      raise ValueError("featurizer settings and idf vector disagree: the settings say "
                       f"idf={d.get('idf', False)}, and an idf vector was "
                       f"{'given' if idf is not None else 'not given'}")
    return cls(num_features=int(d["num_features"]), word_ngrams=tuple(d["word_ngrams"]),
               char_ngrams=tuple(d["char_ngrams"]), weighting=d["weighting"],
               char_weight=float(d["char_weight"]), max_chars=int(d["max_chars"]),
               idf=None if idf is None else np.asarray(idf, np.float32))

  def fit_idf(self, text_chunks) -> "TextFeaturizer":
    """This featurizer with idf weights fitted on ``text_chunks`` (an iterable of lists of
    training texts); a dimension no text touches gets the largest weight."""
    df = np.zeros(self.num_features, np.int64)
    n = 0
    plain = dataclasses.replace(self, idf=None)
    for texts in text_chunks:
      X = plain.transform(texts)
      df += np.bincount(X.indices, minlength=self.num_features)
      n += X.shape[0]
    if n == 0:
      raise ValueError("fit_idf: no training text")
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    return dataclasses.replace(self, idf=idf.astype(np.float32))

  def transform(self, texts: Sequence[str], where: Sequence[str] | None = None
                ) -> sp.csr_matrix:
    """CSR float32 [len(texts), D] with sorted indices; row i is L2-normalised (or empty).

    An empty text (or one with no word character, e.g. ``"!!"``, whose trigrams are still
    kept) may give an empty row: the model then scores from its biases alone, which is the
    popularity prior it learned. ``where`` names each text's origin (``"file:line"``) for
    the error raised on a text longer than ``max_chars``, not a string, or not encodable as
    UTF-8 (a lone surrogate).
    """
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"{where[i] if where else f'texts[{i}]'}: expected a str, "
                        f"got {type(t).__name__}")
      if len(t) > self.max_chars:
        raise ValueError(f"{where[i] if where else f'texts[{i}]'}: text of {len(t)} characters "
                         f"exceeds featurizer.max_chars={self.max_chars}")
    try:
      X = self._counts(texts)
    except UnicodeEncodeError as e:  # A lone surrogate (e.g. "\ud800"): no UTF-8 to hash.
      i = next((i for i, t in enumerate(texts) if not _encodable(t)), None)
      if i is None:
        raise
      raise ValueError(f"{where[i] if where else f'texts[{i}]'}: not encodable as UTF-8 "
                       f"({e.reason}: {texts[i][:40]!r})") from None
    if self.weighting == "log":  # Of the summed counts (a word and a trigram may collide).
      X.data = np.log1p(X.data)
    if self.idf is not None:
      X.data *= self.idf[X.indices]
    # Each row's sum of squares as X.multiply(X).sum(axis=1) forms it (float32, by row).
    sums = np.zeros(X.shape[0], np.float32)
    filled = np.flatnonzero(np.diff(X.indptr))
    if filled.size:
      sums[filled] = np.add.reduceat(X.data * X.data, X.indptr[filled])
    norms = np.sqrt(sums.astype(np.float64))
    X.data /= np.repeat(np.where(norms > 0, norms, 1.0), np.diff(X.indptr)).astype(np.float32)
    X.sort_indices()
    return X

  def _counts(self, texts: list[str]) -> sp.csr_matrix:
    """CSR float32 [len(texts), D]: each dimension's word count + char_weight x its
    character n-gram count."""
    weights = {weight for weight, _ in self._analyzers}
    if weights == {1.0}:  # Words and n-grams count alike: one hashing of them all.
      return self._hashed_counts((sum((a(t) for _, a in self._analyzers), []) for t in texts),
                                 len(texts))
    if len(self._analyzers) == 1:  # N-grams alone, each counting char_weight.
      return self._hashed_counts(map(self._analyzers[0][1], texts), len(texts)) * np.float32(
          self.char_weight)
    (_, words), (weight, chars) = self._analyzers  # Counted apart: a word and an n-gram
    return (self._hashed_counts(map(words, texts), len(texts))  # may share a dimension.
            + self._hashed_counts(map(chars, texts), len(texts)) * np.float32(weight))

  def _hashed_counts(self, grams: Iterator[list[str]], rows: int) -> sp.csr_matrix:
    """CSR float32 counts of each of ``rows`` rows' hashed n-grams (``grams`` yields each
    row's), indices sorted, no duplicates.

    The hasher's index of an n-gram is |murmur3_32(utf-8 bytes, seed 0)| mod D. A few rows
    (a query being served) are hashed here: the hasher costs ~0.05 ms a call before its
    first n-gram; many rows go through its compiled loop.
    """
    D = self.num_features
    if rows > _FEW_ROWS:
      return self._hasher.transform(grams)
    from sklearn.utils import murmurhash3_32
    counted = [np.unique(np.abs(np.fromiter((murmurhash3_32(g) for g in row), np.int64,
                                            len(row))) % D, return_counts=True) for row in grams]
    empty = [np.zeros(0, np.int64)]
    indptr = np.cumsum([0] + [len(i) for i, _ in counted])
    indices = np.concatenate([i for i, _ in counted] + empty).astype(np.int32)
    data = np.concatenate([c for _, c in counted] + empty).astype(np.float32)
    return sp.csr_matrix((data, indices, indptr.astype(np.int32)), shape=(rows, D))


def _encodable(text: str) -> bool:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True
