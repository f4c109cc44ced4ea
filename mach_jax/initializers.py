"""The input table's initializer: ``nn.initializers.normal``'s values, drawn in row blocks.

On XLA:CPU, JAX lowers its threefry hash as a rolled loop whose carry holds two uint32
arrays of the whole draw, so ``jax.random.normal`` for the [R, D, H] input tables needed
twice their size in temporaries: initialising XC WordNet's 1.15 GiB of tables took 3.7 GiB
of temporaries, the run's peak RSS (experiments/bench/NOTES.md). ``normal`` draws the same
values a block of rows at a time, into the output in place.

It relies on JAX's partitionable threefry (``jax_threefry_partitionable``, JAX's default):
element i of a drawn array, flattened, is a function of the key and i alone, so the rows
[d0, d0 + n) of a [D, H] draw are the hash of the counters d0 * H ... (d0 + n) * H - 1.
Where that does not hold (the flag off, another PRNG, a dtype other than float32 or
bfloat16, a table of 2^32 elements or more, or no more rows than one block) it calls
``jax.random.normal``.
``tests/test_initializers.py`` checks the values are JAX's, bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p

__all__ = ["normal"]

# A block of this many bytes of float32 at a time, per repetition (its uint32 counters and
# hashes take 4x that; vmapped over R repetitions, R times as much). 1 MB: the text config's
# initialisation holds 41 MB of temporaries instead of 144 MB at 4 MB, in the same time
# (experiments/bench/NOTES.md).
BLOCK_BYTES = 1 << 20


def normal(stddev: float = 1e-2, block_bytes: int = BLOCK_BYTES):
  """An initializer equal to ``nn.initializers.normal(stddev)``, drawn in row blocks.

  Args:
    stddev: the standard deviation.
    block_bytes: the float32 bytes of one block of rows.

  Returns:
    ``init(key, shape, dtype)``: for a [D, H] float32 or bfloat16 table, the values
    ``jax.random.normal(key, shape) * stddev`` gives, drawn ``block_bytes`` at a time.
  """

  def init(key, shape, dtype=jnp.float32):
    dtype = jnp.dtype(dtype)
    rows = max(1, block_bytes // (4 * shape[-1])) if len(shape) == 2 else 0
    if not _blockable(key, shape, dtype, rows):
      return jax.random.normal(key, shape, dtype) * jnp.array(stddev, dtype)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.key_data(key)
    D, H = shape
    scale = jnp.array(stddev, dtype)

    def block(i, table):
      start = jnp.minimum(i * rows, D - rows)  # The last block overlaps; same values.
      counts = (lax.iota(np.uint32, rows * H).reshape(rows, H)
                + (start * H).astype(np.uint32))
      hi, lo = threefry2x32_p.bind(key[0], key[1], jnp.zeros_like(counts), counts)
      values = _normal_from_bits(hi ^ lo, dtype) * scale
      return lax.dynamic_update_slice(table, values, (start, 0))

    # Every row is written; starting from NaN, one that was not would show, not pass as 0.
    return lax.fori_loop(0, -(-D // rows), block, jnp.full(shape, jnp.nan, dtype))

  return init


def _blockable(key, shape, dtype, rows: int) -> bool:
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  threefry = (str(jax.random.key_impl(key)) == "threefry2x32" if typed
              else jax.config.jax_default_prng_impl == "threefry2x32")
  return (bool(jax.config.jax_threefry_partitionable) and threefry
          and dtype in (jnp.float32, jnp.bfloat16)
          and rows > 0 and shape[0] > rows and shape[0] * shape[1] < 2**32)


def _normal_from_bits(bits, dtype):
  """JAX's normal in ``dtype`` (float32 or bfloat16) from threefry's 32 bits per element
  (``jax.random.uniform`` on (-1, 1), then sqrt(2) erfinv), operation for operation: a
  dtype with under 8 mantissa bits draws 8 random bits (the low byte), as JAX's does."""
  finfo = jnp.finfo(dtype)
  nbits, nmant = finfo.bits, finfo.nmant
  rng_bits = nbits if nmant >= 8 else 8
  uint = {8: np.uint8, 16: np.uint16, 32: np.uint32}
  if rng_bits != 32:
    bits = lax.convert_element_type(bits, uint[rng_bits])
  if rng_bits != nbits:
    bits = lax.convert_element_type(bits, uint[nbits])
  one = np.array(1.0, dtype)
  float_bits = lax.shift_right_logical(bits, np.array(rng_bits - nmant, uint[nbits])) | \
      one.view(uint[nbits])
  floats = lax.bitcast_convert_type(float_bits, dtype) - one
  lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
  u = lax.max(lo, floats * (one - lo) + lo)
  return lax.mul(np.array(np.sqrt(2), dtype), lax.erf_inv(u))
