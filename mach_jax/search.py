"""Query text in, top products out: the serving side of a model trained on a query log.

    searcher = Searcher.load("runs/products/model")          # or the workdir
    for hit in searcher.search("usb c charger 65w", k=10)[0]:
      print(hit.id, hit.score, hit.title)

The featurizer is rebuilt from the settings saved in ``model.json`` (the very function the
model was trained with), and the titles come from the catalogue the training config named
(``config.data.catalogue``: one ``id<TAB>title...`` line per product) or from the
``catalogue`` argument.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import numpy as np

from mach_jax import bundle
from mach_jax.bundle import BUNDLE_DIR
from mach_jax.data.lines import iter_text_lines
from mach_jax.data.text import TextFeaturizer
from mach_jax.predictor import Predictor


@dataclasses.dataclass(frozen=True)
class Hit:
  id: int
  score: float
  title: str


def read_titles(path: str, num_products: int) -> list[str]:
  """Title of each product id from ``id<TAB>title[<TAB>...]`` lines; ids must be 0..K-1,
  each on exactly one line (read as ``mach_jax.data.lines`` reads lines).

  Raises:
    ValueError: naming ``path`` and the line: a malformed line, an id out of range or on
      two lines, invalid UTF-8; or naming the first id without a line.
  """
  titles: list[str | None] = [None] * num_products
  where: dict[int, int] = {}
  for lineno, line in iter_text_lines(path, ValueError):
    parts = line.split("\t")
    if len(parts) < 2 or not re.fullmatch(r"[0-9]+", parts[0]):
      raise ValueError(f"{path}:{lineno}: expected 'id<TAB>title', found {line[:80]!r}")
    i = int(parts[0])
    if i >= num_products:
      raise ValueError(f"{path}:{lineno}: id {i} outside [0, {num_products})")
    if i in where:
      raise ValueError(f"{path}:{lineno}: id {i} already has a title, on line {where[i]}")
    titles[i], where[i] = parts[1], lineno
  missing = [i for i, t in enumerate(titles) if t is None]
  if missing:
    raise ValueError(f"{path}: {len(missing)} product ids have no line (first: {missing[0]})")
  return titles  # type: ignore[return-value]


def read_queries(path: str) -> list[str]:
  """The first tab-separated column of each line of ``path`` (line i is query i).

  Raises:
    ValueError: naming ``path`` and the line, for invalid UTF-8.
  """
  return [line.split("\t")[0] for _, line in iter_text_lines(path, ValueError)]


class Searcher:
  """A model folder plus its featurizer and product titles."""

  def __init__(self, predictor: Predictor, featurizer: TextFeaturizer,
               titles: Sequence[str] | None):
    self.predictor, self.featurizer, self.titles = predictor, featurizer, titles

  @classmethod
  def load(cls, path: str, catalogue: str | None = None) -> "Searcher":
    """``path``: a model folder, or a workdir holding one (``workdir/model``);
    ``catalogue``: the titles' file (None: the training config's; '': no titles, the
    hits' titles are empty)."""
    if not os.path.exists(os.path.join(path, "model.json")) and \
        os.path.exists(os.path.join(path, BUNDLE_DIR, "model.json")):
      path = os.path.join(path, BUNDLE_DIR)
    predictor = Predictor.load(path)
    if not predictor.info["featurizer"]:
      raise ValueError(f"{path}: the model was not trained on text (no featurizer in "
                       "model.json); use Predictor.predict_topk on feature vectors")
    featurizer = bundle.load_featurizer(predictor.path, predictor.info)
    catalogue = predictor.config.data.catalogue if catalogue is None else catalogue
    titles = None
    if catalogue:
      if not os.path.exists(catalogue):
        raise FileNotFoundError(f"catalogue {catalogue}: no such file: pass its path "
                                "(catalogue=..., --catalogue PATH), or '' for hits without "
                                "titles")
      titles = read_titles(catalogue, predictor.spec.K)
    return cls(predictor, featurizer, titles)

  def search(self, queries: str | Sequence[str], k: int = 10, **predict_kwargs
             ) -> list[list[Hit]]:
    """The top-``k`` products of each query, best first (one list per query).

    An empty query, or one with no known n-gram, still gets an answer: the model's
    bias-only scores, i.e. the products it learned to be popular. A query longer than the
    featurizer's ``max_chars`` raises ValueError naming it (``query N``, 1-based), and so
    does a ``k`` outside [1, ``predictor.max_k()``]. Candidate decoding (the 1M-product
    config's) may find fewer than ``k`` distinct products for a query: its list is then
    shorter. ``predict_kwargs`` go to ``Predictor.predict_topk`` (estimator, method, m,
    batch_size).
    """
    if isinstance(queries, str):
      queries = [queries]
    X = self.featurizer.transform(queries, where=[f"query {i + 1}" for i in range(len(queries))])
    scores, ids = self.predictor.predict_topk(X, k=k, **predict_kwargs)
    return [[Hit(int(i), float(s), self.titles[int(i)] if self.titles is not None else "")
             for s, i in zip(srow, irow) if i >= 0]  # (-1: no product found for the slot.)
            for srow, irow in zip(np.asarray(scores), np.asarray(ids))]
