"""Query text to hashed sparse features: the one function training and serving share.

A query becomes word unigrams and bigrams plus character trigrams (within word boundaries,
so ``"usb c"`` gives ``" us"``, ``"usb"``, ``"sb "``, ``" c "``), each hashed into ``D``
dimensions with scikit-learn's ``HashingVectorizer`` (signed 32-bit murmur3, stable across
versions; no vocabulary to store, so unseen words still land somewhere meaningful through
their trigrams). Counts become tf or log(1 + tf) weights and each row is L2-normalised.

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
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

WEIGHTINGS = ("tf", "log")


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
    if self.max_chars < 1:
      raise ValueError(f"featurizer.max_chars={self.max_chars}: must be >= 1")
    if self.idf is not None and np.shape(self.idf) != (self.num_features,):
      raise ValueError(f"featurizer idf has shape {np.shape(self.idf)}; expected "
                       f"({self.num_features},), one weight per hashed dimension")
    object.__setattr__(self, "_vectorizers", self._make_vectorizers())

  def _make_vectorizers(self):
    from sklearn.feature_extraction.text import HashingVectorizer  # Heavy import: lazy.
    common = dict(n_features=self.num_features, alternate_sign=False, norm=None,
                  lowercase=True, dtype=np.float32)
    out = []
    if self.word_ngrams != (0, 0):
      out.append((1.0, HashingVectorizer(analyzer="word", ngram_range=self.word_ngrams,
                                         token_pattern=r"(?u)\b\w+\b", **common)))
    if self.char_ngrams != (0, 0):
      out.append((self.char_weight, HashingVectorizer(analyzer="char_wb",
                                                      ngram_range=self.char_ngrams, **common)))
    return out

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
    the error raised on a text longer than ``max_chars`` or not a string.
    """
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"{where[i] if where else f'texts[{i}]'}: expected a str, "
                        f"got {type(t).__name__}")
      if len(t) > self.max_chars:
        raise ValueError(f"{where[i] if where else f'texts[{i}]'}: text of {len(t)} characters "
                         f"exceeds featurizer.max_chars={self.max_chars}")
    X = None
    for weight, vectorizer in self._vectorizers:  # Counts: words + char_weight * trigrams.
      block = vectorizer.transform(texts)
      if weight != 1.0:
        block = block * np.float32(weight)
      X = block if X is None else X + block
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    if self.weighting == "log":  # Of the summed counts (a word and a trigram may collide).
      X.data = np.log1p(X.data)
    if self.idf is not None:
      X.data *= self.idf[X.indices]
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1), np.float64).ravel())
    X.data /= np.repeat(np.where(norms > 0, norms, 1.0), np.diff(X.indptr)).astype(np.float32)
    X.sort_indices()
    return X
