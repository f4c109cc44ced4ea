"""Data: XC-format reader, query logs of text, synthetic catalogue, fixed-shape batching.

A training source is an ``XCData`` (in memory) or a ``QueryLog`` (streamed from disk); both
offer ``num_points``, ``num_features``, ``num_labels``, ``label_counts()``,
``widths(batch_size)``, ``first_batch(...)``, ``batches(...)`` and ``featurizer`` (the
text featurizer a model folder must keep, or None for given features), which is all the
training loop uses.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from mach_jax.data.query_log import QueryLog
from mach_jax.data.synthetic import make_catalogue
from mach_jax.data.text import TextFeaturizer
from mach_jax.data.validation import held_out
from mach_jax.data.xc import XCData, read_xc


def count_lines(path: str) -> int:
  """Lines of a text file, a last line without its newline included."""
  n, last = 0, b"\n"
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      n, last = n + chunk.count(b"\n"), chunk[-1:]
  return n + (last != b"\n")


def featurizer(data_config) -> TextFeaturizer:
  """The text featurizer of ``config.data.featurizer`` (its idf, if any, not yet fitted)."""
  f = data_config.featurizer
  return TextFeaturizer(num_features=f.num_features, word_ngrams=tuple(f.word_ngrams),
                        char_ngrams=tuple(f.char_ngrams), weighting=f.weighting,
                        char_weight=f.char_weight, max_chars=f.max_chars)


def _require(data_config, key: str) -> str:
  path = data_config[key]
  if not path:
    raise ValueError(f"config.data.{key} is empty: pass --config.data.{key}=PATH")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.data.{key}={path}: no such file")
  return path


class Splits(NamedTuple):
  """A run's data: what it trains on, what it tunes and selects on, what it reports."""
  train: XCData | QueryLog
  validation: XCData | None  # None when config.data.validation_fraction is 0.
  test: XCData | QueryLog | None  # A QueryLog only when streamed; None: no config.data.test.


def in_memory(split: XCData | QueryLog) -> XCData:
  """A split as an ``XCData``: a query log is featurized now."""
  return split.to_xc() if isinstance(split, QueryLog) else split


def load(data_config) -> tuple[XCData | QueryLog, XCData]:
  """(train, test) of ``load_splits``: the validation slice, if any, is left out of train."""
  splits = load_splits(data_config)
  return splits.train, splits.test


def load_splits(data_config, passes: int = 2, *, cache_dir: str | None = None,
                stream_test: bool = False) -> Splits:
  """Train, validation and test data for ``config.data``, by ``data_config.name``:

  * ``'synthetic'``: ``make_catalogue(**data_config.synthetic)``;
  * ``'xc'``: the XC-format files ``train`` and ``test`` (parsed once and kept in
    ``cache_dir`` when that is set; see ``read_xc``); an empty ``test``: no test split (None);
  * ``'queries'``: ``query<TAB>ids`` logs; the training log is streamed from disk
    (``QueryLog``), the test log (if any) held in memory. K is ``num_labels``, or the line count of
    ``catalogue`` (one product per line) when that is 0.

  With ``validation_fraction`` > 0 the validation slice is carved out of the training data
  (``mach_jax.data.validation``); the test split is never touched by it. ``passes``: how many
  times training will read the data (the run's epochs); with one, a streamed log keeps no
  cache (``data.cache_mb``), which only a second pass would read. The cache's file goes to
  ``data.cache_dir``, else ``cache_dir`` (the training loop passes its workdir), else the
  system's temporary directory. ``stream_test``: a test log is checked line by line now and
  returned as a ``QueryLog``, featurized only when ``in_memory`` asks (after training, when
  a validation slice does the periodic evaluations).
  """
  d = data_config
  holdout = (d.validation_fraction, d.validation_seed)
  if d.name == "queries":
    train_path, test_path = _require(d, "train"), d.test and _require(d, "test")
    K = d.num_labels or count_lines(_require(d, "catalogue"))
    f = featurizer(d)
    train = QueryLog(train_path, f, K, buffer_size=d.buffer_size, holdout=holdout,
                     cache_mb=d.cache_mb if passes > 1 else 0,
                     cache_dir=d.cache_dir or cache_dir)
    if d.featurizer.idf:  # Fitted on the training part only: never on validation or test.
      f = train.featurizer = f.fit_idf(train.texts())
    held = (QueryLog(train_path, f, K, holdout=holdout, part="validation").to_xc()
            if d.validation_fraction else None)
    test = QueryLog(test_path, f, K) if test_path else None
    return Splits(train, held, test if stream_test or test is None else test.to_xc())
  if d.name == "synthetic":
    train, test = make_catalogue(**dict(d.synthetic))
  elif d.name == "xc":
    train_path, test_path = _require(d, "train"), d.test and _require(d, "test")
    cache_dir = d.cache_dir or None
    train = read_xc(train_path, cache_dir=cache_dir)
    test = read_xc(test_path, cache_dir=cache_dir) if test_path else None
    if test is not None and ((train.num_features, train.num_labels)
                             != (test.num_features, test.num_labels)):
      raise ValueError(f"{train_path} has D={train.num_features}, L={train.num_labels} "
                       f"but {test_path} has D={test.num_features}, L={test.num_labels}")
  else:
    raise ValueError(f"config.data.name={d.name!r}: expected xc | queries | synthetic")
  if not d.validation_fraction:
    return Splits(train, None, test)
  train, held = train.split(held_out(np.arange(train.num_points), *holdout))
  return Splits(train, held, test)
