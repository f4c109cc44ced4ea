"""Helpers shared by the tests: small configs, the tiny sharded setup, the shared data sets.

tests/conftest.py sets up eight simulated CPU devices before jax is imported; this module
may be imported by tests and by tests/sharding_run.py (after it set its own devices).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from mach_jax import config as config_lib, data as data_lib, metrics, sharding, state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))


def shared_file(name: str, split: str) -> str:
  """../shared/data/<name>/<split>.txt.gz, or skip the test when it is absent."""
  path = os.path.join(SHARED_DATA, name, f"{split}.txt.gz")
  if not os.path.exists(path):
    pytest.skip(f"{path} not found (../shared/data is absent)")
  return path


def tiny_config():
  """A synthetic catalogue of 400 classes that trains in seconds on one device."""
  c = config_lib.default_config()
  c.data.name = "synthetic"
  c.data.synthetic.update(num_train=3000, num_test=500, num_classes=400, num_features=1000,
                          words_per_label=5, noise_words=8, seed=0)
  c.model.update(R=4, B=32, hidden=(64,), loss="softmax_hist")
  c.mesh = (("data", 1), ("rep", 1))  # One device; tests/test_sharding.py covers the rest.
  c.eval.estimators = ("mean", "log_mean")
  c.train.update(batch_size=64, num_epochs=3, log_every_steps=10, progress_bar=False)
  c.eval.update(batch_size=128, every_epochs=1, subset=200)
  return c


def popular_baseline(train_Y, test_Y):
  """Metrics of answering every point with the 5 most frequent training labels."""
  top = np.argsort(-np.asarray(train_Y.sum(axis=0)).ravel(), kind="stable")[:5]
  return metrics.evaluate(np.tile(top, (test_Y.shape[0], 1)), test_Y)


def tiny_setup(mesh_spec, R: int = 8, num_batches: int = 1, clip_norm: float = 0.0,
               row_sparse: bool = False, input_dim: int = 0, shared_input: bool = False,
               sequential: bool = False, embedding_bag: str = "auto",
               input_dropout: float = 0.0, hidden_dropout: float = 0.0,
               lazy_rows: bool = True, rowwise_nu: bool = False):
  """``create_train_state`` of the tiny config on ``mesh_spec``, and its first batches.

  Returns (TrainSetup, host batches in training order).
  """
  c = tiny_config()
  c.model.R = R
  c.mesh = mesh_spec
  c.optimizer.update(clip_norm=clip_norm, row_sparse=row_sparse, lazy_rows=lazy_rows,
                     rowwise_nu=rowwise_nu)
  c.model.input_dim = input_dim
  c.model.shared_input = shared_input
  c.model.sequential_reps = sequential
  c.model.embedding_bag = embedding_bag
  c.train.update(input_dropout=input_dropout, hidden_dropout=hidden_dropout)
  tr, _ = data_lib.load(c.data)
  setup = state_lib.create_train_state(c, tr, total_steps=100)
  batches = list(tr.batches(c.train.batch_size, shuffle=True, widths=setup.widths,
                            num_shards=setup.mesh.shape[sharding.DATA_AXIS]))
  return setup, batches[:num_batches]


def run_steps(mesh_spec, num_steps: int = 3, R: int = 8, **kwargs):
  """Train ``num_steps`` steps of the tiny model on ``mesh_spec``; params as NumPy.

  ``kwargs`` go to ``tiny_setup`` (row_sparse, input_dim, ...).
  """
  setup, batches = tiny_setup(mesh_spec, R, num_steps, **kwargs)
  state = setup.state
  for b in batches:
    state, _ = setup.run(state, b)
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                      state.params)


def flat(tree) -> dict:
  """{key path: leaf} of a pytree."""
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def write_log(path, n, K=50, seed=0):
  """A query log of ``n`` lines over K products at ``path``; returns the path."""
  rng = np.random.default_rng(seed)
  words = ["usb", "charger", "red", "sofa", "kids", "bike", "lamp", "mug"]
  with open(path, "w") as f:
    for i in range(n):
      ids = sorted(set(rng.integers(0, K, size=1 + (i % 7 == 0)).tolist()))
      query = " ".join(rng.choice(words, size=1 + i % 3)) + f" q{i}"
      f.write(f"{query}\t{','.join(map(str, ids))}\n")
  return path


def written_lines(path) -> list[str]:
  """A written text file's lines; it must end in one newline and hold no carriage return."""
  with open(path, encoding="utf-8", newline="") as f:
    text = f.read()
  assert text.endswith("\n") and "\r" not in text
  return text[:-1].split("\n")


def query_log_ids(path) -> list[int]:
  """Every id of a written test log (``query<TAB>id1,id2,...``), in order; no query or id
  field may be empty."""
  ids = []
  for line in written_lines(path):
    query, field = line.split("\t")
    assert query and field
    ids.extend(int(i) for i in field.split(","))
  return ids

