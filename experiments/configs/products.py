"""MACH product search on the synthetic catalogue: query text in, product ids out.

Build the data (deterministic; 1M products, 10M queries, written in chunks), then train by
streaming the query log from disk, then search::

    python -m experiments.datasets.products --products 1000000 --queries 10000000 \
        --test_every 1000 --out runs/data/products
    python -m experiments.train --config experiments/configs/products.py \
        --workdir runs/products_1m
    python -m experiments.search --workdir runs/products_1m "usb c charger 65w"

Result (2-core CPU VM, 2026-11-28; one pass over 9.99M queries, 35 min, 4,814 queries/s,
peak RSS 3.0 GiB): test P@1 .299, P@5 .077, R@10 .364 with the log-mean merge
(docs/product_search.md).

``products.py:small`` reads ``runs/data/products_small`` (``--products 20000 --queries
200000``) for a run of a minute. ``products.py:hashed_input`` hashes each repetition's 2^18
input features into its own 65,536 rows (``model.input_dim``): 17.9M parameters instead of
68.2M, under a quarter of the full softmax's 81.8M (docs/product_search.md).
``products.py:quarter`` spends the same quarter differently, chosen on a validation slice
(below): H = 128 over 32,768 hashed rows per repetition, 18.9M parameters; one pass over the
9.99M queries, test P@1 .311, P@5 .080, R@10 .377 in 2,099 s of training (2-core CPU VM,
2026-12-04; docs/product_search.md).
"""

import os

from experiments.configs.paths import built_root
from mach_jax.config import default_config


def get_config(arg=None):
  if arg not in (None, "small", "hashed_input", "quarter"):
    raise ValueError(f"{__name__}: unknown variant {arg!r}; expected none, 'small', "
                     "'hashed_input' or 'quarter'")
  c = default_config()
  root = built_root("products_small" if arg == "small" else "products")
  c.data.name = "queries"  # query<TAB>ids text files, featurized while streaming.
  c.data.train = os.path.join(root, "train.tsv")
  c.data.test = os.path.join(root, "test.tsv")
  c.data.catalogue = os.path.join(root, "products.tsv")  # id<TAB>title...; K = its lines.
  # K = the catalogue's lines (data.num_labels = 0); the featurizer is the default's,
  # 2^18 hashed word 1-2-grams and character trigrams (config.data.featurizer).

  c.model.R = 4
  c.model.B = 4096
  c.model.hidden = (64,)
  c.model.loss = "softmax_hist"  # One product per query mostly: a softmax over buckets.
  c.optimizer.learning_rate = 2e-2  # Probes on 300K queries: 1e-2 .186, 2e-2 .209 P@1.
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 200
  c.optimizer.row_sparse = True  # Only the rows of the hashed n-grams a batch holds.
  # The step one repetition at a time: 1.2x the queries/s and 180 MB less peak RSS on
  # `quarter` (experiments/bench/NOTES.md).
  c.model.sequential_reps = True
  c.train.batch_size = 1024
  c.train.num_epochs = 1
  c.train.log_every_steps = 200
  c.checkpoint.every_steps = 2000

  c.eval.k = 10  # P@1 .. P@10 and R@10.
  c.eval.estimator = "log_mean"
  c.eval.estimators = ("log_mean", "mean")
  c.eval.batch_size = 512
  c.eval.decode = "candidates"  # Top-2 buckets per repetition: K = 1M is too many to score.
  c.eval.candidates_m = 2
  if arg == "hashed_input":
    c.model.input_dim = 1 << 16
  if arg == "quarter":
    # The best validation P@1 of three points of at most a quarter of the full softmax
    # (H x input_dim: 64 x 65,536 .286, 128 x 32,768 .302, 128 x 32,768 over B = 2,048
    # .296), each trained 3 epochs on a tenth of the log with 2% of it held out
    # (experiments/bench/NOTES.md); the test log was not read.
    c.model.hidden = (128,)
    c.model.input_dim = 1 << 15
  if arg == "small":
    c.model.B = 1024
    c.train.num_epochs = 2
    c.train.batch_size = 512
    c.checkpoint.every_steps = 500
  return c
