"""Self-describing model folders and a Predictor that needs no training code path.

``export_bundle`` writes ``DIR/params`` (orbax, parameters only: no optimizer state) and
``DIR/model.json`` (hash spec, config, D, K, featurizer settings, library versions), so a
folder explains itself and can be served on its own::

    predictor = Predictor.load("runs/bibtex/model")
    scores, classes = predictor.predict_topk(X, k=5)   # X: scipy CSR [n, D]
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import scipy.sparse as sp

from mach_jax import data as data_lib, decode, sharding, train as train_lib
from mach_jax.hashing import HashSpec

BUNDLE_DIR = "model"


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def export_bundle(path: str, params: Any, spec: HashSpec, config, num_features: int) -> int:
  """Write the inference bundle to ``path``; returns its size in bytes."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, "params"), params, force=True)
  if jax.process_index() == 0:
    featurizer = (data_lib.featurizer(config).to_dict() if config.data.name == "queries"
                  else None)
    info = {"hash_spec": spec.to_dict(), "num_features": num_features, "num_classes": spec.K,
            "config": json.loads(config.to_json()), "featurizer": featurizer,
            "versions": train_lib.library_versions()}
    with open(os.path.join(path, "model.json"), "w") as f:
      json.dump(info, f, indent=2)
  return folder_bytes(path)


class Predictor:
  """Top-k classes for new points from an exported model folder, on one device."""

  def __init__(self, path: str, info: dict, params: Any):
    self.path = path
    self.info = info
    self.config = ml_collections.ConfigDict(info["config"])
    self.spec = HashSpec.from_dict(info["hash_spec"])
    self.num_features = int(info["num_features"])
    self.params = params
    self.mesh = sharding.make_mesh((("data", 1), ("rep", 1)), self.spec.R, 1,
                                   devices=jax.devices()[:1])
    self._model = train_lib.make_model(self.config, self.num_features, self.spec)
    self._decoders: dict[tuple, decode.Decoder] = {}

  @classmethod
  def load(cls, path: str) -> "Predictor":
    path = os.path.abspath(path)
    info_path = os.path.join(path, "model.json")
    if not os.path.exists(info_path):
      raise FileNotFoundError(f"{info_path}: not a model folder (export_bundle writes one)")
    with open(info_path) as f:
      info = json.load(f)
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(os.path.join(path, "params"))
      tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            tree)
      params = ckptr.restore(os.path.join(path, "params"), target)
    return cls(path, info, params)

  def predict_topk(self, X: sp.csr_matrix, k: int = 5, estimator: str | None = None,
                   batch_size: int | None = None, method: str | None = None,
                   m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, k], class ids [n, k]), best first, for CSR features X [n, D].

    ``estimator``, ``batch_size``, ``method`` ('exact' | 'candidates') and ``m`` default to
    the model's evaluation config.
    """
    X = sp.csr_matrix(X, dtype=np.float32)
    if X.shape[1] != self.num_features:
      raise ValueError(f"X has {X.shape[1]} features; the model at {self.path} expects "
                       f"{self.num_features}")
    estimator = estimator or self.config.eval.estimator
    batch_size = batch_size or self.config.eval.batch_size
    method = method or self.config.eval.get("decode", "exact")
    m = m or self.config.eval.get("candidates_m", 2)
    key = (batch_size, method, m)
    if key not in self._decoders:
      config = ml_collections.ConfigDict(self.config.to_dict())
      config.eval.update(batch_size=batch_size, decode=method, candidates_m=m)
      self._decoders[key] = train_lib.make_decoder(config, self.spec)
    Y = sp.csr_matrix((X.shape[0], self.spec.K), dtype=np.float32)
    out = train_lib.predict_topk(self.params, self._logits_fn(), self._decoders[key],
                                 X, Y, batch_size=batch_size, k=k, estimators=(estimator,),
                                 mesh=self.mesh, dense=self.config.model.dense_input)
    return out[estimator]

  def _logits_fn(self):
    if not hasattr(self, "_logits"):
      keys = ("dense", "labels", "mask") if self.config.model.dense_input else \
          ("indices", "values", "segments", "labels", "mask")
      example = {key: np.zeros(1) for key in keys}
      self._logits = train_lib.make_logits_fn(self._model, self.spec, self.mesh, self.params,
                                              example)
    return self._logits
