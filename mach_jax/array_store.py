"""How mach-jax writes and reads array trees with orbax: checkpoints and model folders.

Kept apart from ``mach_jax.checkpoint`` (the training run's store and resume policy) so
that serving a model folder (``bundle``) never loads the training side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

__all__ = ["orbax", "arrays_handler", "save_args", "restore_args", "abstract_like"]


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
  """The orbax save argument of ``tree`` for ``arrays_handler``."""
  return orbax().args.PyTreeSave(tree)


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
