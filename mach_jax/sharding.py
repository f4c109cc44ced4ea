"""The one place where mesh axes meet devices.

MACH's repetitions share nothing but the input batch, so the natural layout is a mesh with
two axes: ``'rep'`` (each device owns whole repetitions: parameters and optimizer state are
split on their leading repetition axis) and ``'data'`` (devices in one 'rep' column see
different rows of the batch). The config declares the mesh as data, for example
``config.mesh = (('data', 1), ('rep', -1))``; -1 takes all remaining devices.

With data = 1 the train step has no collective at all. With data > 1 the only collective is
the all-reduce of each repetition's gradient across its 'data' group.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mach_jax.model import REP_AXIS

DATA_AXIS = "data"
AXES = (DATA_AXIS, REP_AXIS)


def make_mesh(mesh_spec: Sequence[tuple[str, int]], num_repetitions: int, batch_size: int,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Build the ('data', 'rep') mesh of ``mesh_spec`` over ``devices`` (default: all).

  Raises:
    ValueError: saying what to change, when the axes are not exactly ('data', 'rep'), the
      sizes do not multiply to the device count, R is not divisible by the 'rep' size, or the
      batch is not divisible by the 'data' size.
  """
  devices = list(jax.devices() if devices is None else devices)
  spec = [(str(name), int(size)) for name, size in mesh_spec]
  names = tuple(name for name, _ in spec)
  if sorted(names) != sorted(AXES):
    raise ValueError(f"config.mesh={mesh_spec!r}: name exactly the axes {AXES}, "
                     "e.g. (('data', 1), ('rep', -1))")
  sizes = dict(spec)
  free = [n for n, s in spec if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"config.mesh={mesh_spec!r}: sizes must be positive, at most one -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if len(devices) % fixed:
      raise ValueError(f"config.mesh={mesh_spec!r}: {len(devices)} devices are not a multiple "
                       f"of the fixed axis sizes ({fixed})")
    sizes[free[0]] = len(devices) // fixed
  needed = math.prod(sizes.values())
  if needed > len(devices):
    raise ValueError(f"config.mesh={mesh_spec!r} needs {needed} devices but only "
                     f"{len(devices)} are present; make data x rep <= {len(devices)} or use -1")
  devices = devices[:needed]  # An explicit mesh smaller than the machine uses the first ones.
  if num_repetitions % sizes[REP_AXIS]:
    raise ValueError(
        f"config.model.R={num_repetitions} is not divisible by the 'rep' mesh size "
        f"{sizes[REP_AXIS]} ({len(devices)} devices, data={sizes[DATA_AXIS]}): each device "
        "must own whole repetitions. Choose R as a multiple of the 'rep' size, or set "
        f"config.mesh to (('data', {len(devices) // math.gcd(len(devices), num_repetitions)}), "
        f"('rep', {math.gcd(len(devices), num_repetitions)})).")
  if batch_size % sizes[DATA_AXIS]:
    raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the 'data' "
                     f"mesh size {sizes[DATA_AXIS]}")
  shape = tuple(sizes[n] for n in AXES)
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES)


def initialize_distributed(cfg) -> None:
  """``jax.distributed.initialize`` from ``config.distributed`` (no-op when disabled).

  Empty fields are left to JAX's auto-detection (SLURM, Open MPI, Cloud TPU, or the
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
  Multi-process CPU runs need gloo collectives, which this selects.
  """
  if not cfg.enabled:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if cfg.coordinator_address:
    kwargs["coordinator_address"] = cfg.coordinator_address
  if cfg.num_processes > 0:
    kwargs["num_processes"] = cfg.num_processes
  if cfg.process_id >= 0:
    kwargs["process_id"] = cfg.process_id
  jax.distributed.initialize(**kwargs)


def rep_sharding(mesh: Mesh, x) -> NamedSharding:
  """Leaves with a leading repetition axis are split on 'rep'; scalars are replicated."""
  return NamedSharding(mesh, P(REP_AXIS) if getattr(x, "ndim", 0) >= 1 else P())


def state_shardings(mesh: Mesh, state: Any) -> Any:
  return jax.tree.map(lambda x: rep_sharding(mesh, x), state)


BATCH_SPEC = P(DATA_AXIS)  # Every batch array is split on its leading axis over 'data'.


def batch_shardings(mesh: Mesh, batch: dict[str, Any]) -> dict[str, NamedSharding]:
  return {k: NamedSharding(mesh, BATCH_SPEC) for k in batch}


def put(tree: Any, shardings: Any) -> Any:
  """Host arrays -> global jax Arrays with ``shardings``, also across processes.

  Every process holds the same full host array (same data, same order), and each places
  only the slices its own devices need.
  """
  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)


def check_state_sharding(mesh: Mesh, state: Any, expected: Any) -> str:
  """Assert every leaf is sharded as ``expected``; return a one-line per-device summary."""
  def check(path, x, want):
    if not x.sharding.is_equivalent_to(want, x.ndim):
      raise AssertionError(f"{jax.tree_util.keystr(path)} is sharded as {x.sharding}, "
                           f"expected {want}")
  jax.tree_util.tree_map_with_path(check, state, expected)
  rep = mesh.shape[REP_AXIS]
  per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
  return (f"mesh data={mesh.shape[DATA_AXIS]} x rep={rep} over {mesh.size} devices; "
          f"each device holds {jax.tree.leaves(state)[0].shape[0] // rep} repetitions "
          f"({per_device / 2**20:.1f} MiB of parameters and optimizer state)")


def collectives(hlo_text: str) -> dict[str, int]:
  """Count the collective ops in compiled (optimized) HLO text."""
  names = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
  out = {}
  for name in names:
    n = sum(1 for line in hlo_text.splitlines()
            if f" {name}(" in line or f" {name}-start(" in line)
    if n:
      out[name] = n
  return out
