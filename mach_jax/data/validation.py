"""The validation slice: which training points are held out to tune and select on.

A point is held out when a seeded MurmurHash3 of its 0-based position in the training
split falls below ``fraction`` of the hash range. The rule needs no pass over the data and
no state, so an in-memory set and a query log streamed from disk carve the same slice, the
slice does not move when the training seed changes, and nothing of it is ever trained on.
"""

from __future__ import annotations

import numpy as np

from mach_jax.hashing import murmur3_32


def held_out(positions: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """bool [n]: whether each 0-based training position belongs to the validation slice.

  Raises:
    ValueError: when ``fraction`` is outside [0, 1).
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"config.data.validation_fraction={fraction}: expected 0 <= f < 1")
  positions = np.asarray(positions, np.int64)
  if fraction == 0.0:
    return np.zeros(positions.shape, bool)
  h = murmur3_32((positions & 0xFFFFFFFF).astype(np.uint32),
                 np.asarray(seed, np.uint32), np)
  return h.astype(np.float64) < fraction * 2.0 ** 32
