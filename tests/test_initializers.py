"""The blocked input-table initializer draws JAX's values, in bounded memory."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mach_jax import initializers, model as model_lib


def _bits(x):
  x = np.asarray(x)
  return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape,block_rows", [((1000, 7), 64), ((1001, 13), 100),
                                              ((4096, 32), 4096 // 3), ((5, 3), 2)])
@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.key(123),
                                 jax.random.PRNGKey(7)])
def test_blocks_give_jax_normal_bit_for_bit(shape, block_rows, key, dtype):
  blocked = initializers.normal(0.01, block_bytes=4 * shape[1] * block_rows)
  want = jax.jit(lambda k: nn.initializers.normal(0.01)(k, shape, dtype))(key)
  got = jax.jit(lambda k: blocked(k, shape, dtype))(key)
  assert got.dtype == want.dtype == dtype
  np.testing.assert_array_equal(_bits(got), _bits(want))
  assert np.isfinite(np.asarray(got, np.float32)).all()


def test_vmapped_over_repetition_keys():
  keys = jax.random.split(jax.random.key(3), 4)
  blocked = initializers.normal(0.02, block_bytes=4 * 11 * 50)
  want = jax.jit(jax.vmap(lambda k: nn.initializers.normal(0.02)(k, (999, 11))))(keys)
  got = jax.jit(jax.vmap(lambda k: blocked(k, (999, 11))))(keys)
  np.testing.assert_array_equal(_bits(got), _bits(want))


def test_what_it_does_not_block_is_jax_normal():
  """Compared under jit, as a model's init always runs (eagerly, JAX's own normal rounds
  the product with stddev separately, one ulp away from its jitted values)."""
  key = jax.random.key(5)
  for shape, dtype in [((4, 4), jnp.float32), ((3000, 8), jnp.float16), ((7,), jnp.float32),
                       ((2, 10, 4), jnp.float32)]:
    want = jax.jit(lambda k: nn.initializers.normal(0.01)(k, shape, dtype))(key)
    got = jax.jit(lambda k: initializers.normal(0.01, block_bytes=64)(k, shape, dtype))(key)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.parametrize("table_dtype,bound", [(jnp.float32, 0.25), (jnp.bfloat16, 1.25)])
def test_the_models_init_program_no_longer_holds_the_whole_draw(table_dtype, bound):
  """XC WordNet's shape (R = 8, D = 150,335, H = 256, B = 1,024): the program that draws the
  1.15 GiB of tables needed 3.7 GiB of temporaries with ``jax.random.normal`` (its rolled
  threefry loop carries two uint32 copies of the draw); blocked, about an eighth of the
  tables. In bfloat16 JAX's draw needed 8x the tables; blocked, about their size (XLA:CPU
  has no bfloat16 dynamic-update-slice and widens the table around each block's write).
  Compiled only, never run."""
  R, D, H, B = 8, 150_335, 256, 1024
  x = {"indices": np.arange(8, dtype=np.int32), "values": np.ones(8, np.float32),
       "segments": np.zeros(8, np.int32), "mask": np.ones(1, bool)}
  model = model_lib.MACH(num_repetitions=R, num_features=D, num_buckets=B, hidden=(H,),
                         embedding_bag="gather", table_dtype=table_dtype)
  memory = jax.jit(lambda k: model.init(k, x)).lower(jax.random.key(0)).compile() \
      .memory_analysis()
  table_bytes = R * D * H * jnp.dtype(table_dtype).itemsize
  assert memory.output_size_in_bytes >= table_bytes
  assert memory.temp_size_in_bytes < table_bytes * bound, memory
