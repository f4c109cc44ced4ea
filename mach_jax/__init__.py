"""mach-jax: MACH (Merged-Average Classifiers via Hashing) for extreme classification.

    import mach_jax
    config = mach_jax.default_config()
    config.data.update(train="train.txt", test="test.txt")
    results = mach_jax.train_and_evaluate(config, "runs/demo")
    scores, ids = mach_jax.Predictor.load("runs/demo/model").predict_topk(X, k=5)

Names are imported on first use, so that ``import mach_jax.predictor`` (serving) never
loads the training loop.

References:
  Medini, Huang, Wang, Mohan & Shrivastava, "Extreme Classification in Log Memory using
  Count-Min Sketch: A Case Study of Amazon Search with 50M Products", NeurIPS 2019.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "default_config": "mach_jax.config",
    "build": "mach_jax.config",
    "train_and_evaluate": "mach_jax.train",
    "create_train_state": "mach_jax.state",
    "TrainState": "mach_jax.state",
    "HashSpec": "mach_jax.hashing",
    "MACH": "mach_jax.model",
    "Predictor": "mach_jax.predictor",
    "Searcher": "mach_jax.search",
    "evaluate": "mach_jax.metrics",
    "read_xc": "mach_jax.data.xc",
    "write_xc": "mach_jax.data.xc",
}
_MODULES = ("data", "metrics")

__all__ = [*_EXPORTS, *_MODULES]


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
  elif name in _MODULES:
    value = importlib.import_module(f"mach_jax.{name}")
  else:
    raise AttributeError(f"module 'mach_jax' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(__all__)
