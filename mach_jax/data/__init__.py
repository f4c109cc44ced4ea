"""Data: XC-format reader, query logs of text, synthetic catalogue, fixed-shape batching.

A training source is an ``XCData`` (in memory) or a ``QueryLog`` (streamed from disk); both
offer ``num_points``, ``num_features``, ``num_labels``, ``label_counts()``,
``widths(batch_size)``, ``first_batch(...)`` and ``batches(...)``, which is all the
training loop uses.
"""

from __future__ import annotations

import os

from mach_jax.data.query_log import QueryLog
from mach_jax.data.synthetic import make_catalogue
from mach_jax.data.text import TextFeaturizer
from mach_jax.data.xc import XCData, read_xc


def count_lines(path: str) -> int:
  """Lines of a text file, a last line without its newline included."""
  n, last = 0, b"\n"
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      n, last = n + chunk.count(b"\n"), chunk[-1:]
  return n + (last != b"\n")


def featurizer(config) -> TextFeaturizer:
  """The text featurizer of ``config.featurizer`` (data.name == 'queries')."""
  f = config.featurizer
  return TextFeaturizer(num_features=f.num_features, word_ngrams=tuple(f.word_ngrams),
                        char_ngrams=tuple(f.char_ngrams), weighting=f.weighting,
                        char_weight=f.char_weight, max_chars=f.max_chars)


def load_queries(config) -> tuple[QueryLog, XCData]:
  """(streamed training log, held-out queries in memory) for ``data.name == 'queries'``.

  K is ``config.data.num_labels``, or the line count of ``config.data.catalogue``
  (one product per line) when that is 0.
  """
  d = config.data
  for key in ("train", "test"):
    if not d.get(key):
      raise ValueError(f"config.data.{key} is empty: pass --config.data.{key}=PATH")
  K = d.get("num_labels", 0)
  if not K:
    if not d.get("catalogue"):
      raise ValueError("config.data.num_labels=0 needs config.data.catalogue (products.tsv)")
    if not os.path.exists(d.catalogue):
      raise FileNotFoundError(f"config.data.catalogue={d.catalogue}: no such file")
    K = count_lines(d.catalogue)
  f = featurizer(config)
  train = QueryLog(d.train, f, K, buffer_size=d.get("buffer_size", 100_000))
  test = QueryLog(d.test, f, K).to_xc()
  return train, test


def load(data_config) -> tuple[XCData, XCData]:
  """(train, test) for ``config.data``: the synthetic catalogue or an XC-format pair
  (query logs: ``load_queries``, which needs the whole config for the featurizer).

  ``data_config.name == 'synthetic'`` uses ``data_config.synthetic`` as keyword arguments of
  ``make_catalogue``; anything else reads ``data_config.train`` and ``data_config.test``
  (parsed once and kept in ``data_config.cache_dir`` when that is set; see ``read_xc``).
  """
  if data_config.name == "synthetic":
    return make_catalogue(**dict(data_config.synthetic))
  for key in ("train", "test"):
    path = data_config.get(key)
    if not path:
      raise ValueError(f"config.data.{key} is empty: pass --config.data.{key}=PATH")
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.data.{key}={path}: no such file")
  cache_dir = data_config.get("cache_dir") or None
  train = read_xc(data_config.train, cache_dir=cache_dir)
  test = read_xc(data_config.test, cache_dir=cache_dir)
  if (train.num_features, train.num_labels) != (test.num_features, test.num_labels):
    raise ValueError(f"{data_config.train} has D={train.num_features}, L={train.num_labels} "
                     f"but {data_config.test} has D={test.num_features}, L={test.num_labels}")
  return train, test
