"""A deterministic synthetic catalogue: the embedded default data set (no download).

It imitates product search: K products with power-law popularity (a few head products,
a long tail), each with a prototype -- a small set of feature ids ("words") with
weights. A point picks 1 + Poisson(labels_mean - 1) products by popularity and emits
words sampled from their prototypes plus background words from a Zipfian vocabulary.
Values are log(1 + count), L2-normalised per point (tf-style). The same arguments and seed
give the same arrays on the same NumPy version.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mach_jax.data.xc import XCData


def _zipf(n: int, alpha: float) -> np.ndarray:
  p = 1.0 / np.arange(1, n + 1) ** alpha
  return p / p.sum()


def make_catalogue(num_train: int = 50_000, num_test: int = 5_000, num_classes: int = 10_000,
                   num_features: int = 20_000, *, popularity_alpha: float = 1.0,
                   labels_mean: float = 1.5, prototype_size: int = 12,
                   words_per_label: int = 5, noise_words: int = 8,
                   seed: int = 0) -> tuple[XCData, XCData]:
  """Returns (train, test) drawn from the same distribution.

  Args:
    num_train, num_test: points in each split.
    num_classes: K products.
    num_features: D vocabulary size.
    popularity_alpha: Zipf exponent of product popularity (1.0: the head is very popular).
    labels_mean: mean number of products per point (at least one).
    prototype_size: words in each product's prototype.
    words_per_label: words drawn (with replacement) from each label's prototype.
    noise_words: background words per point, Zipfian over the vocabulary.
    seed: everything is derived from it.
  """
  rng = np.random.default_rng(seed)
  K, D, N = num_classes, num_features, num_train + num_test
  class_ids = rng.permutation(K)  # popularity rank -> class id
  popularity = _zipf(K, popularity_alpha)
  word_freq = _zipf(D, 1.0)
  word_ids = rng.permutation(D)
  # Prototypes: words mostly from the mid/long tail of the vocabulary, with decaying weights.
  prototypes = rng.integers(0, D, size=(K, prototype_size))
  proto_weights = _zipf(prototype_size, 0.8)

  num_labels = 1 + rng.poisson(labels_mean - 1.0, size=N)
  owner = np.repeat(np.arange(N), num_labels)
  labels = class_ids[rng.choice(K, size=owner.size, p=popularity)]

  slots = rng.choice(prototype_size, size=(owner.size, words_per_label), p=proto_weights)
  label_words = prototypes[labels[:, None], slots]
  noise = word_ids[rng.choice(D, size=(N, noise_words), p=word_freq)]

  rows = np.concatenate([np.repeat(owner, words_per_label), np.repeat(np.arange(N), noise_words)])
  cols = np.concatenate([label_words.ravel(), noise.ravel()])
  X = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(N, D))
  X.sum_duplicates()
  X.data = np.log1p(X.data).astype(np.float32)
  norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
  X = sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ X, dtype=np.float32)
  X.sort_indices()
  Y = sp.csr_matrix((np.ones(owner.size, np.float32), (owner, labels)), shape=(N, K))
  Y.sum_duplicates()
  Y.data[:] = 1.0
  Y.sort_indices()
  split = num_train
  return (XCData(X=X[:split], Y=Y[:split]), XCData(X=X[split:], Y=Y[split:]))
