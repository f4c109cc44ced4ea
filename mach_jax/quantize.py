"""int8 storage of an input table, one scale per row (symmetric: the row's largest |value|
maps to 127).

The input table is nearly all of a MACH model (R tables of [D, H] floats against R output
layers of [H, B]); stored as int8 with a float32 scale per row it takes a quarter of the
bytes. ``mach_jax.bundle.quantize`` writes a model folder that way and ``bundle.load``
reads it back as float32 (``dequantize_rows``), so everything downstream runs as before.

References:
  Guo et al., "Compression of Deep Learning Recommendation Models" (row-wise int8
  quantization of embedding tables), and PyTorch's ``FloatToFused8BitRowwiseQuantized``.
"""

from __future__ import annotations

import numpy as np

SCALE = "embedding_scale"  # The scales' name, beside the table in the same params dict.


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(q, scale) with ``table ~= q * scale`` row by row.

  Args:
    table: float [..., D, H].

  Returns:
    q: int8 [..., D, H], round(table / scale), in [-127, 127].
    scale: float32 [..., D, 1], the row's largest |value| / 127 (1 for an all-zero row).
    Every entry of ``dequantize_rows(q, scale)`` is within scale / 2 of ``table``'s.
  """
  table = np.asarray(table, np.float32)
  if table.ndim < 2:
    raise ValueError(f"quantize_rows: expected a table [..., D, H], got shape {table.shape}")
  if not np.isfinite(table).all():
    raise ValueError("quantize_rows: the table holds NaN or inf values; a trained model's "
                     "table should not")
  scale = np.abs(table).max(axis=-1, keepdims=True) / np.float32(127)
  scale[scale == 0] = 1
  q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
  return q, scale.astype(np.float32)


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """float32 ``q * scale`` ([..., D, H] from int8 [..., D, H] and [..., D, 1])."""
  return np.asarray(q, np.float32) * np.asarray(scale, np.float32)
