"""How mach-jax writes and reads array trees with orbax: checkpoints and model folders.

Kept apart from ``mach_jax.checkpoint`` (the training run's store and resume policy) so
that serving a model folder (``bundle``) never loads the training side.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import os
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

__all__ = ["orbax", "arrays_handler", "save_args", "restore_args", "abstract_like",
           "read_in_place", "CHUNK_BYTES"]

# Arrays are stored in chunks of at most this many bytes (orbax splits the largest
# dimensions first: an [8, 32768, 256] float32 table is stored as eight [8, 4096, 256]
# chunks), so that ``read_in_place`` holds one chunk, not one array, beside the tree.
CHUNK_BYTES = 32 << 20


def orbax():
  """orbax.checkpoint, imported on first use: 0.2 s of every process start otherwise (2-core
  CPU VM), paid by runs that never checkpoint (sweeps, the speed benchmark)."""
  import orbax.checkpoint as ocp
  return ocp


def arrays_handler() -> ocp.PyTreeCheckpointHandler:
  """The orbax handler of every array tree mach-jax writes (checkpoints, model folders).

  OCDBT and zarr2 as orbax's default, without its zstd compression: compressing holds
  encoded copies of the chunks in memory while a save runs, about the state's size again
  for trained (random-looking) float32 values, which compress by only 8%
  (``experiments.bench.checkpoint_memory``; NOTES.md, "Memory"). Reading does not depend
  on it: compressed checkpoints written before restore as they did.
  """
  return orbax().PyTreeCheckpointHandler(use_compression=False)


def save_args(tree: Any) -> Any:
  """The orbax save argument of ``tree`` for ``arrays_handler`` (chunks of ``CHUNK_BYTES``)."""
  ocp = orbax()
  return ocp.args.PyTreeSave(tree, save_args=jax.tree.map(  # (0: one chunk per array.)
      lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES or None), tree))


def restore_args(target: Any) -> Any:
  """The orbax restore argument that reads a tree onto ``target``'s shapes, dtypes and
  shardings (a tree of ``jax.ShapeDtypeStruct``), for ``arrays_handler``."""
  ocp = orbax()
  return ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs with the shardings of ``state`` (an array or abstract tree)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


@functools.partial(jax.jit, donate_argnums=0)
def _write_block(array: jax.Array, block: jax.Array, origin) -> jax.Array:
  return jax.lax.dynamic_update_slice(array, block, origin)


def _saved_arrays(directory: str) -> set[str]:
  """The names (``'params.table'``) of the arrays of the tree saved in ``directory``."""
  with open(os.path.join(directory, "_METADATA")) as f:
    meta = json.load(f)
  if not meta.get("use_ocdbt") or meta.get("use_zarr3"):
    raise ValueError(f"{directory} is not an OCDBT/zarr2 tree (mach-jax's arrays_handler)")
  return {".".join(str(k) for k in ast.literal_eval(key)) for key in meta["tree_metadata"]}


def _name(path) -> str:
  return ".".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))
                  for k in path)


def read_in_place(directory: str, tree: Any) -> Any:
  """The arrays saved in ``directory`` (a tree written with ``save_args``), read one stored
  chunk at a time into ``tree``'s arrays, which are donated and overwritten in place.

  A whole-tree orbax restore reads each array into host memory and then copies it to the
  device: beside the tree it replaces it holds up to two copies of the tree. This holds
  one stored chunk (``CHUNK_BYTES``; an array written before chunking is one chunk).

  Args:
    directory: the saved tree's folder (a checkpoint's ``<step>/state``).
    tree: arrays (overwritten; do not use them afterwards) or ``jax.ShapeDtypeStruct``s
      (allocated here), each on a single device, with the saved arrays' names (their key
      paths joined by '.'), shapes and dtypes. ``None`` subtrees are not read.

  Returns:
    ``tree`` with the saved values.

  Raises:
    ValueError: a leaf is not one device's array, or names, shapes or dtypes differ from
      what was saved (nothing has been overwritten then).
  """
  import tensorstore as ts
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  saved = _saved_arrays(directory)
  context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
  stores = []
  for path, leaf in leaves:  # Check everything before overwriting anything.
    name = _name(path)
    if name not in saved or len(leaf.sharding.device_set) != 1:
      raise ValueError(f"cannot read {name!r} of {directory} in place: "
                       + ("not saved there" if name not in saved else "not on one device"))
    store = ts.open({"driver": "zarr", "kvstore": {
        "driver": "ocdbt", "base": "file://" + os.path.abspath(directory) + "/", "path": name}},
        open=True, read=True, context=context).result()
    if tuple(store.shape) != tuple(leaf.shape) or store.dtype.numpy_dtype != leaf.dtype:
      raise ValueError(f"{name!r} of {directory} is {store.dtype.numpy_dtype}"
                       f"{list(store.shape)}, not {leaf.dtype}{list(leaf.shape)}")
    stores.append(store)
  out = []
  for (_, leaf), store in zip(leaves, stores):
    device = next(iter(leaf.sharding.device_set))
    array = (leaf if isinstance(leaf, jax.Array)
             else jnp.zeros(leaf.shape, leaf.dtype, device=device))
    chunk = store.chunk_layout.read_chunk.shape or leaf.shape
    for origin in itertools.product(*(range(0, n, c) for n, c in zip(leaf.shape, chunk))):
      index = tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, chunk, leaf.shape))
      block = jax.device_put(store[index].read().result(), device)
      array = _write_block(array, block, origin) if leaf.ndim else block
    out.append(array)
  return jax.tree_util.tree_unflatten(treedef, out)
