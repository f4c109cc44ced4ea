"""Data: XC-format reader, synthetic catalogue generator, fixed-shape batching."""

from __future__ import annotations

import os

from mach_jax.data.synthetic import make_catalogue
from mach_jax.data.xc import XCData, read_xc


def load(data_config) -> tuple[XCData, XCData]:
  """(train, test) for ``config.data``: the synthetic catalogue or an XC-format pair.

  ``data_config.name == 'synthetic'`` uses ``data_config.synthetic`` as keyword arguments of
  ``make_catalogue``; anything else reads ``data_config.train`` and ``data_config.test``.
  """
  if data_config.name == "synthetic":
    return make_catalogue(**dict(data_config.synthetic))
  for key in ("train", "test"):
    path = data_config.get(key)
    if not path:
      raise ValueError(f"config.data.{key} is empty: pass --config.data.{key}=PATH")
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.data.{key}={path}: no such file")
  train, test = read_xc(data_config.train), read_xc(data_config.test)
  if (train.num_features, train.num_labels) != (test.num_features, test.num_labels):
    raise ValueError(f"{data_config.train} has D={train.num_features}, L={train.num_labels} "
                     f"but {data_config.test} has D={test.num_features}, L={test.num_labels}")
  return train, test
