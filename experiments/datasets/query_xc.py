"""A query-log set as XC files, featurized as a config featurizes it, for the peers.

    python -m experiments.datasets.query_xc --src runs/data/products \
        --out runs/data/products_q1m --config products --train_every 10

The peers (napkinXC, omikuji, PECOS) read XC files of features; mach-jax's text configs read
the raw query logs. This writes both for one set, so that `experiments.bench.peers` can run
them side by side (`--systems mach_text,...` with `--text_config`):

- OUT/train.tsv: every ``--train_every``-th line of SRC/train.tsv (line numbers 1, 1 + n,
  1 + 2n, ...; 1 keeps them all), OUT/test.tsv: all of SRC/test.tsv, OUT/items.tsv: the
  catalogue (SRC/items.tsv, or SRC/products.tsv for the synthetic catalogue).
- OUT/train.txt.gz, OUT/test.txt.gz: the same lines as XC files, X the featurizer of
  ``experiments/configs/<config>.py`` (``config.data.featurizer``: the very features that
  config's model sees; with ``idf`` on, the idf is fitted on OUT/train.tsv's text), Y the
  lines' ids; K = the catalogue's lines.
- OUT/stats.json: the counts, and which source and featurizer made the files.

A subsample is for peers that cannot hold the whole log (the 10M-query log of the 1M
catalogue featurizes to about 3 GB of CSR): a figure measured on one names it.
Deterministic: the same source gives the same bytes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil

import numpy as np
import scipy.sparse as sp

from mach_jax import data as data_lib
from mach_jax.data import query_log
from mach_jax.data.xc import write_xc

CHUNK = 65_536


def catalogue_path(src: str) -> str:
  """SRC/items.tsv, or SRC/products.tsv (the synthetic catalogue's name)."""
  for name in ("items.tsv", "products.tsv"):
    if os.path.exists(os.path.join(src, name)):
      return os.path.join(src, name)
  raise FileNotFoundError(f"{src}: holds neither items.tsv nor products.tsv (the catalogue, "
                          "one 'id<TAB>title' line per item)")


def read_log(path: str, num_labels: int, every: int) -> tuple[list[str], list[list[int]]]:
  """The queries and ids of lines 1, 1 + every, ... of a query log (strictly parsed)."""
  queries, labels = [], []
  for chunk_queries, chunk_labels, first in query_log.read_lines(path, num_labels, CHUNK):
    for i, (q, ids) in enumerate(zip(chunk_queries, chunk_labels)):
      if (first + i - 1) % every == 0:
        queries.append(q)
        labels.append(ids)
  return queries, labels


def featurize(featurizer, queries: list[str], path: str) -> sp.csr_matrix:
  """CSR float32 [len(queries), D], in chunks; errors name ``path`` and the line's index."""
  parts = []
  for s in range(0, len(queries), CHUNK):
    texts = queries[s:s + CHUNK]
    parts.append(featurizer.transform(texts, where=[f"{path}: kept line {s + i + 1}"
                                                    for i in range(len(texts))]))
  return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, featurizer.num_features))


def build(src: str, out: str, config_name: str, train_every: int) -> dict:
  """Write OUT's files (module docstring); returns the counts written to stats.json."""
  if train_every < 1:
    raise ValueError(f"--train_every={train_every}: expected a positive integer")
  config = importlib.import_module(f"experiments.configs.{config_name}").get_config()
  catalogue = catalogue_path(src)
  K = data_lib.count_lines(catalogue)
  os.makedirs(out, exist_ok=True)
  shutil.copyfile(catalogue, os.path.join(out, "items.tsv"))
  featurizer = data_lib.featurizer(config.data)
  stats = {"src": os.path.abspath(src), "config": config_name, "train_every": train_every,
           "num_labels": K, "featurizer": featurizer.to_dict()}
  splits = {}
  for part, every in (("train", train_every), ("test", 1)):
    path = os.path.join(src, f"{part}.tsv")
    queries, labels = read_log(path, K, every)
    if not queries:
      raise ValueError(f"{path}: no lines kept")
    with open(os.path.join(out, f"{part}.tsv"), "w", encoding="utf-8") as f:
      f.writelines(f"{q}\t{','.join(map(str, ids))}\n" for q, ids in zip(queries, labels))
    splits[part] = (queries, labels, path)
  if config.data.featurizer.idf:  # As training fits it: on the training text only.
    train_queries = splits["train"][0]
    featurizer = featurizer.fit_idf(train_queries[s:s + CHUNK]
                                    for s in range(0, len(train_queries), CHUNK))
    np.save(os.path.join(out, "featurizer_idf.npy"), featurizer.idf, allow_pickle=False)
  for part, (queries, labels, path) in splits.items():
    X = featurize(featurizer, queries, path)
    Y = query_log.label_matrix(labels, K)
    write_xc(os.path.join(out, f"{part}.txt.gz"), X, Y)
    stats[part] = {"lines": len(queries), "nnz": int(X.nnz),
                   "empty_rows": int((np.diff(X.indptr) == 0).sum()),
                   "labels_with_a_point": int((np.diff(Y.tocsc().indptr) > 0).sum())}
  with open(os.path.join(out, "stats.json"), "w") as f:
    json.dump(stats, f, indent=2)
  return stats


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True,
                      help="folder with train.tsv, test.tsv and items.tsv or products.tsv")
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", default="products",
                      help="experiments/configs/<name>.py whose data.featurizer makes X")
  parser.add_argument("--train_every", type=int, default=1,
                      help="keep training lines 1, 1 + n, 1 + 2n, ... (1: all)")
  args = parser.parse_args()
  print(json.dumps(build(args.src, args.out, args.config, args.train_every)))


if __name__ == "__main__":
  main()
