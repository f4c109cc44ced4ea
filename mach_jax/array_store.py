"""How mach-jax writes and reads array trees with orbax: checkpoints and model folders.

Kept apart from ``mach_jax.checkpoint`` (the training run's store; ``resume``, its policy) so
that serving a model folder (``bundle``) never loads the training side.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import functools
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

__all__ = ["orbax", "arrays_handler", "save_args", "save_tree", "joined_on_failure",
           "join_threads", "orbax_thread", "restore_args", "abstract_like", "read_in_place",
           "write_failure", "PIECE_BYTES"]

# ``read_in_place`` moves an array to the device in pieces of at most this many bytes.
# Reading an 800 MB state back took 18-31 MB above it in pieces of 1-2 MB, 49-62 in 4 MB,
# 86-91 in 8 MB, 119-120 in 32 MB, at the same 0.4-0.6 s (1.4 s in 32 MB; `python -m
# experiments.bench.checkpoint_memory --mb 800 --modes restore_in_place --piece_mb 32,8,4,2,1`,
# 2-core Intel Xeon, 2026-12-06).
PIECE_BYTES = 2 << 20


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
  """The orbax save argument of ``tree`` for ``arrays_handler``.

  One stored chunk per array: orbax's smaller chunks (``SaveArgs.chunk_byte_size``) are
  copies, made for the whole tree at once while a save runs (+517 MB for a 512 MB tree of
  [8, 32768, 256] arrays; experiments/bench/NOTES.md), and ``read_in_place`` reads an
  uncompressed chunk in pieces anyway.
  """
  return orbax().args.PyTreeSave(tree)


def join_threads(since: set, wait_s: float = 120.0, only=None) -> None:
  """Wait for the threads started since the snapshot ``since`` (``set(threading.
  enumerate())``) and still running, those ``only(thread)`` accepts, for ``wait_s`` in all.

  orbax raises at the first array whose write fails (a full disk) while the other arrays'
  writes go on in their own threads: a caller that removed the unfinished folder at once
  could see them write parts of it again.
  """
  deadline = time.monotonic() + wait_s
  for thread in set(threading.enumerate()) - since:
    if only is None or only(thread):
      thread.join(timeout=max(0.0, deadline - time.monotonic()))


def orbax_thread(thread: threading.Thread) -> bool:
  """Whether ``thread`` is one of orbax's own (its commit futures' threads)."""
  return type(thread).__module__.startswith("orbax.")


@contextlib.contextmanager
def joined_on_failure(wait_s: float = 120.0):
  """Re-raise an error inside the block only once every thread it started has ended (or
  after ``wait_s``; ``join_threads``). Across processes it is raised at once: a thread may
  wait for the other processes, which wait for this one (``sharding.ending_at_once_on_error``)."""
  before = set(threading.enumerate())
  try:
    yield
  except BaseException:
    if jax.process_count() == 1:
      join_threads(before, wait_s)
    raise


def save_tree(directory: str, tree: Any) -> None:
  """Write ``tree``'s arrays to ``directory`` (replacing it) with ``arrays_handler``; a
  failed write raises once no write it started is running (``joined_on_failure``)."""
  with joined_on_failure(), orbax().Checkpointer(arrays_handler()) as ckptr:
    ckptr.save(directory, args=save_args(tree), force=True)


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


def _pieces(shape: tuple[int, ...], itemsize: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
  """Blocks (origin, shape) that tile a C-order array of ``shape``, each one contiguous
  byte range of at most ``PIECE_BYTES`` (or one row of the last axis): whole trailing axes,
  a range of one axis, single indices of the axes before it. An [R, D, H] table whose
  [D, H] slices exceed a piece moves in blocks of rows of one repetition."""
  if not shape:
    return [((), ())]
  k = 0  # The axis the blocks split: the first whose trailing axes fit in a piece.
  while k < len(shape) - 1 and int(np.prod(shape[k + 1:])) * itemsize > PIECE_BYTES:
    k += 1
  rows = max(1, PIECE_BYTES // max(1, int(np.prod(shape[k + 1:])) * itemsize))
  tail = tuple(shape[k + 1:])
  return [(outer + (i,) + (0,) * len(tail), (1,) * k + (min(rows, shape[k] - i),) + tail)
          for outer in np.ndindex(*shape[:k]) for i in range(0, shape[k], rows)]


class LayoutMismatch(ValueError):
  """A saved array's shape or dtype differs from the one asked for: no reader can restore
  it onto that layout (``read_in_place`` and orbax's whole restore alike)."""


def read_in_place(directory: str, tree: Any) -> Any:
  """The arrays saved in ``directory`` (a tree written with ``save_args``), read piece by
  piece into ``tree``'s arrays, which are donated and overwritten in place.

  A whole-tree orbax restore reads each array into host memory and then copies it to the
  device: beside the tree it replaces it holds up to two copies of the tree (NOTES.md). An
  uncompressed stored chunk (what ``arrays_handler`` writes) is read here in byte ranges of
  ``PIECE_BYTES``, each written into its place at once: one piece is held beside the tree.
  A compressed one (written before 2026-12-02) is read whole, then written piece by piece.

  Args:
    directory: the saved tree's folder (a checkpoint's ``<step>/state``).
    tree: arrays (overwritten; do not use them afterwards) or ``jax.ShapeDtypeStruct``s
      (allocated here), each on a single device, with the saved arrays' names (their key
      paths joined by '.'), shapes and dtypes. ``None`` subtrees are not read.

  Returns:
    ``tree`` with the saved values.

  Raises:
    ValueError: a leaf is not one device's array or was not saved there; LayoutMismatch
      (a ValueError): its shape or dtype differs from what was saved. Raised before
      anything is overwritten.
  """
  import tensorstore as ts
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  saved = _saved_arrays(directory)
  context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
  base = "file://" + os.path.abspath(directory) + "/"
  kv = ts.KvStore.open({"driver": "ocdbt", "base": base}, context=context).result()
  keys = {k.decode() for k in kv.list().result()}
  plans = []
  for path, leaf in leaves:  # Check everything before overwriting anything.
    name = _name(path)
    if name not in saved or f"{name}/.zarray" not in keys:
      raise ValueError(f"cannot read {name!r} of {directory} in place: not saved there")
    if len(leaf.sharding.device_set) != 1:
      raise ValueError(f"cannot read {name!r} of {directory} in place: not on one device")
    meta = json.loads(kv[f"{name}/.zarray"])
    if tuple(meta["shape"]) != tuple(leaf.shape) or jnp.dtype(meta["dtype"]) != leaf.dtype:
      raise LayoutMismatch(f"{name!r} of {directory} is {jnp.dtype(meta['dtype'])}"
                           f"{list(meta['shape'])}, not "
                           f"{leaf.dtype}{list(leaf.shape)}")
    key = f"{name}/" + (meta.get("dimension_separator", ".").join("0" * leaf.ndim) or "0")
    raw = (meta["compressor"] is None and not meta["filters"] and meta["order"] == "C"
           and meta["chunks"] == meta["shape"] and key in keys)
    plans.append((name, key if raw else None))
  out = []
  for (_, leaf), (name, key) in zip(leaves, plans):
    device = next(iter(leaf.sharding.device_set))
    array = (leaf if isinstance(leaf, jax.Array)
             else jnp.zeros(leaf.shape, leaf.dtype, device=leaf.sharding))
    size = leaf.dtype.itemsize
    stored = None if key else ts.open({"driver": "zarr", "kvstore": {
        "driver": "ocdbt", "base": base, "path": name}}, context=context).result().read().result()
    for origin, shape in _pieces(leaf.shape, size):
      if key:
        lo = int(np.ravel_multi_index(origin, leaf.shape)) * size if leaf.ndim else 0
        hi = lo + int(np.prod(shape)) * size
        piece = np.frombuffer(kv.read(key, byte_range=slice(lo, hi)).result().value,
                              leaf.dtype).reshape(shape)
      else:
        piece = stored[tuple(slice(o, o + n) for o, n in zip(origin, shape))]
      block = jax.device_put(piece, device)
      array = _write_block(array, block, origin) if leaf.ndim else block
    out.append(array)
  return jax.tree_util.tree_unflatten(treedef, out)


def write_failure(e: Exception) -> tuple[int, str]:
  """(errno, words) of a failed write: orbax and tensorstore report a full disk as a
  ValueError, OSError... whose text says so."""
  if "No space left on device" in str(e) or getattr(e, "errno", None) == errno.ENOSPC:
    return errno.ENOSPC, f"no space left on the device: {str(e)[-300:]}"
  return errno.EIO, f"{type(e).__name__}: {str(e)[-300:]}"
