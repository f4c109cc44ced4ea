"""The one place where mesh axes meet devices.

MACH's repetitions share nothing but the input batch, so the natural layout is a mesh with
two axes: ``'rep'`` (each device owns whole repetitions: parameters and optimizer state are
split on their leading repetition axis) and ``'data'`` (devices in one 'rep' column see
different rows of the batch). The config declares the mesh as data, for example
``config.mesh = (('data', 1), ('rep', -1))``; -1 takes all remaining devices. How the
training state is laid out on it is data too (``STATE_PARTITION_RULES``).

With data = 1 the train step has no collective at all. With data > 1 the only collective is
the all-reduce of each repetition's gradient across its 'data' group. (The shared input
layer, ``config.model.shared_input``, an ablation, adds one all-reduce over 'rep'.)

The jitted, sharded steps are made here from the pure ones of ``mach_jax.steps``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mach_jax import steps
from mach_jax.data import batching
from mach_jax.model import REP_AXIS

if TYPE_CHECKING:
  from mach_jax.config import Parts

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
  Multi-process CPU runs need gloo collectives, which this selects. When a process dies,
  the others exit once ``heartbeat_timeout_seconds`` pass without its heartbeat (a step's
  collective or a checkpoint's barrier may fail sooner); rerunning every process resumes
  from the last checkpoint (docs/reliability.md).
  """
  if not cfg.enabled or jax.distributed.is_initialized():  # (A rerun within the process.)
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if cfg.coordinator_address:
    kwargs["coordinator_address"] = cfg.coordinator_address
  if cfg.num_processes > 0:
    kwargs["num_processes"] = cfg.num_processes
  if cfg.process_id >= 0:
    kwargs["process_id"] = cfg.process_id
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=cfg.heartbeat_timeout_seconds)


# (regex over a leaf's key path, its PartitionSpec); the first match wins. Every leaf of the
# parameters and of the (vmapped) optimizer states has the repetition axis first; only the
# global step counter is a scalar, and a shared input layer (model.shared_input, every path
# through a 'shared' key) is replicated.
STATE_PARTITION_RULES = (
    (r"^\.step$", P()),
    (r"\['shared'\]", P()),
    (r".*", P(REP_AXIS)),
)


def partition_specs(tree: Any, rules=STATE_PARTITION_RULES) -> Any:
  """The PartitionSpec of every leaf of ``tree`` by ``rules``."""
  def one(path, _):
    key = jax.tree_util.keystr(path)
    for pattern, spec in rules:
      if re.search(pattern, key):
        return spec
    raise ValueError(f"no partition rule matches {key}; add one to STATE_PARTITION_RULES")
  return jax.tree_util.tree_map_with_path(one, tree)


def state_shardings(mesh: Mesh, state: Any) -> Any:
  """NamedShardings of a training state (or parameter tree) on ``mesh``, by the rules."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), partition_specs(state),
                      is_leaf=lambda x: isinstance(x, P))


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


def check_state_sharding(mesh: Mesh, state: Any, num_repetitions: int) -> str:
  """Assert each device holds whole repetitions; return a one-line per-device summary.

  The expected layout is derived here from the shapes alone, not from the partition rules:
  a leaf whose leading axis has size R must be split on 'rep' (each device holding
  R / rep of it); a scalar, and a shared input layer's leaf (its path goes through a
  'shared' key), must be replicated; any other leaf is an error.
  """
  rep = mesh.shape[REP_AXIS]

  def check(path, x):
    key = jax.tree_util.keystr(path)
    if x.ndim == 0 or "['shared']" in key:
      want = NamedSharding(mesh, P())
    elif x.shape[0] == num_repetitions:
      want = NamedSharding(mesh, P(REP_AXIS))
    else:
      raise AssertionError(f"{key} has shape {x.shape}: no leading repetition axis of size "
                           f"R={num_repetitions}")
    if not x.sharding.is_equivalent_to(want, x.ndim):
      raise AssertionError(f"{key} is sharded as {x.sharding}, expected {want}")
  jax.tree_util.tree_map_with_path(check, state)
  per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
  return (f"mesh data={mesh.shape[DATA_AXIS]} x rep={rep} over {mesh.size} devices; "
          f"each device holds {num_repetitions // rep} repetitions "
          f"({per_device / 2**20:.1f} MiB of parameters and optimizer state)")


def to_host(x) -> np.ndarray:
  """A global array as NumPy on every process (gathers across hosts when needed)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def on_every_process(ok: bool) -> bool:
  """Whether ``ok`` holds on every process of the run; where there are several, a barrier
  that every process must reach (the same calls in the same order)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).all())


def ending_at_once_on_error(fn: Callable[[], Any]) -> Any:
  """``fn()``; across processes an error ends this process at once (logged, status 1), as a
  kill would, so that the others, which may wait for it at a collective, exit by themselves."""
  try:
    return fn()
  except Exception:
    if jax.process_count() == 1:
      raise
    logging.error("process %d of %d ends now, so that the others stop too:\n%s",
                  jax.process_index(), jax.process_count(), traceback.format_exc())
    logging.flush(), sys.stdout.flush(), sys.stderr.flush()
    os._exit(1)  # (Raising, it would wait at JAX's shutdown barrier, and the others for it.)


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _collective_lines(hlo_text: str, name: str) -> list[str]:
  return [line for line in hlo_text.splitlines()
          if f" {name}(" in line or f" {name}-start(" in line]


def collectives(hlo_text: str) -> dict[str, int]:
  """Count the collective ops in compiled (optimized) HLO text."""
  out = {}
  for name in COLLECTIVES:
    n = len(_collective_lines(hlo_text, name))
    if n:
      out[name] = n
  return out


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Bytes each kind of collective produces per execution of compiled HLO text (the sum of
  its result shapes, per device)."""
  out = {}
  for name in COLLECTIVES:
    total = 0
    for line in _collective_lines(hlo_text, name):
      result = line.split("=", 1)[1].split(f" {name}", 1)[0]
      for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", result):
        if dtype not in _DTYPE_BYTES:
          raise ValueError(f"collective of an unknown element type {dtype!r}: {line[:200]}")
        total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    if total:
      out[name] = total
  return out


# ---------------------------------------------------------------------------------------
# The pure steps of mach_jax.steps, run by each device on its own repetitions.


def _local_parts(parts: Parts, mesh: Mesh):
  """The model of one device's repetitions, and a function giving that device's rows of the
  label-hash and input-hash parameters (to call inside ``shard_map``)."""
  r_local = parts.spec.R // mesh.shape[REP_AXIS]
  local_model = parts.model.clone(num_repetitions=r_local)
  label_params = jnp.asarray(parts.spec.params())
  input_params = jnp.asarray(parts.spec.input_params())

  def hash_params():
    start = jax.lax.axis_index(REP_AXIS) * r_local
    return tuple(jax.lax.dynamic_slice_in_dim(p, start, r_local)
                 for p in (label_params, input_params))
  return local_model, hash_params


def _batch_layout(mesh: Mesh, batch):
  """(axis to sum over, shard_map in_specs of the batch).

  With one 'data' shard the batch is declared replicated (the same layout), so the step
  has no psum at all: a psum over a size-1 axis still compiles to an all-reduce.
  """
  if mesh.shape[DATA_AXIS] == 1:
    return None, {k: P() for k in batch}
  return DATA_AXIS, {k: BATCH_SPEC for k in batch}


def make_train_step(parts: Parts, mesh: Mesh, state, batch) -> Callable:
  """``steps.train_step`` for ``mesh``: each device runs it on its own repetitions and rows.

  Jitted with the state donated and explicit in/out shardings; ``state`` and ``batch`` are
  examples that fix the tree structures.
  """
  local_model, hash_params = _local_parts(parts, mesh)
  data_axis, batch_specs = _batch_layout(mesh, batch)

  def local_step(state, batch):
    label_params, input_params = hash_params()
    return steps.train_step(state, batch, model=local_model, tx=parts.tx, spec=parts.spec,
                            loss=parts.config.model.loss, table_tx=parts.table_tx,
                            hash_params=label_params, input_params=input_params,
                            data_axis=data_axis,
                            input_dropout=parts.config.train.input_dropout,
                            hidden_dropout=parts.config.train.hidden_dropout)

  state_specs = partition_specs(state)
  metric_specs = {"loss": P(REP_AXIS)}
  step = jax.shard_map(local_step, mesh=mesh, in_specs=(state_specs, batch_specs),
                       out_specs=(state_specs, metric_specs))
  shardings = state_shardings(mesh, state)
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(shardings, batch_shardings(mesh, batch)),
                 out_shardings=(shardings, jax.tree.map(
                     lambda s: NamedSharding(mesh, s), metric_specs)))


def make_logits_fn(parts: Parts, mesh: Mesh, params, batch) -> Callable:
  """jit(params, batch) -> logits [R, b, B], each device computing its own repetitions.

  A device runs its repetitions over sparse input one after another (``model.sequential``)
  whatever training did: side by side, a batch's rows of every repetition's table are
  gathered at once, [R, T, H] (800 MB for 512 text queries at R = 8, H = 256), and a batch
  took 2.2x as long (experiments/bench/NOTES.md). A data-parallel mesh keeps the model as
  it is.
  """
  model = parts.model
  if model.sparse_input and not model.shared_input and mesh.shape[DATA_AXIS] == 1:
    parts = dataclasses.replace(parts, model=model.clone(sequential=True))
  batch = features(batch)
  local_model, hash_params = _local_parts(parts, mesh)
  data_axis, batch_specs = _batch_layout(mesh, batch)

  def local_logits(params, batch):
    return steps.logits_step(params, batch, model=local_model, spec=parts.spec,
                             input_params=hash_params()[1])

  fn = jax.shard_map(local_logits, mesh=mesh,
                     in_specs=(partition_specs(params), batch_specs),
                     out_specs=P(REP_AXIS, data_axis))
  jitted = jax.jit(fn, in_shardings=(state_shardings(mesh, params),
                                     batch_shardings(mesh, batch)))

  def logits_fn(params, batch):
    return jitted(params, features(batch))
  logits_fn.lower = lambda params, batch: jitted.lower(params, features(batch))
  return logits_fn


def features(batch: dict[str, Any]) -> dict[str, Any]:
  """``batch`` without what only training reads (a training batch's touched rows,
  ``batching.HOST_ROWS``), as the logits function takes it."""
  return {k: v for k, v in batch.items() if k not in batching.HOST_ROWS}


def must_sync_each_step(mesh: Mesh) -> bool:
  """Whether to wait for each step before dispatching the next.

  XLA:CPU's in-process collectives can deadlock when several steps with an all-reduce are
  queued at once on few cores (seen with 2-8 simulated devices on 2 cores: a rendezvous
  times out after 40 s and aborts the process). Only data-parallel CPU meshes have
  collectives, so only they pay for the wait.
  """
  return mesh.shape[DATA_AXIS] > 1 and mesh.devices.flat[0].platform == "cpu"
