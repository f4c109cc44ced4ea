"""A few sharded train steps, callable in-process or as a worker of a multi-process run.

    python tests/sharding_run.py --process_id 0 --num_processes 2 --port 12355 --out p0.npz

Every process builds the same batches in the same order; the mesh's 'rep' axis spans all
processes' devices. Process 0 writes the final parameters (gathered) to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys


def tiny_setup(mesh_spec, R: int = 8, num_batches: int = 1, clip_norm: float = 0.0):
  """A tiny model, its optimizer and initial state on ``mesh_spec``, and a step runner.

  Returns a namespace with ``config, spec, model, tx, mesh, batches`` (host batches, in
  training order), ``state`` and ``run(state, host_batch) -> (state, metrics)``.
  """
  import types

  import jax

  from mach_jax import data as data_lib, sharding, train
  from mach_jax.data import batching
  from tests.test_train import tiny_config

  c = tiny_config()
  c.model.R = R
  c.optimizer.clip_norm = clip_norm
  tr, _ = data_lib.load(c.data)
  spec, model, tx, _ = train.make_parts(c, tr.num_features, tr.num_labels, 100)
  mesh = sharding.make_mesh(mesh_spec, R, c.train.batch_size)
  batches = list(batching.iterate_batches(tr.X, tr.Y, c.train.batch_size, shuffle=True,
                                          num_shards=mesh.shape[sharding.DATA_AXIS]))
  batches = batches[:num_batches]
  state = train.init_state(model, tx, jax.random.key(0), batches[0], mesh)
  step = train.make_train_step(model, tx, spec, c.model.loss, mesh, state, batches[0])

  def run(state, batch):
    state, m = step(state, sharding.put(batch, sharding.batch_shardings(mesh, batch)))
    if train.must_sync_each_step(mesh):
      jax.block_until_ready(m)
    return state, m

  return types.SimpleNamespace(config=c, spec=spec, model=model, tx=tx, mesh=mesh,
                               batches=batches, state=state, step=step, run=run)


def run_steps(mesh_spec, num_steps: int = 3, R: int = 8):
  """Train ``num_steps`` steps of a tiny model on ``mesh_spec``; returns params as NumPy."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  t = tiny_setup(mesh_spec, R, num_steps)
  state = t.state
  for b in t.batches:
    state, _ = t.run(state, b)
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                      state["params"])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--local_devices", type=int, default=2)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import numpy as np
  from ml_collections import ConfigDict

  from mach_jax import sharding

  sharding.initialize_distributed(ConfigDict(dict(
      enabled=True, coordinator_address=f"127.0.0.1:{args.port}",
      num_processes=args.num_processes, process_id=args.process_id)))
  assert jax.process_count() == args.num_processes, jax.process_count()
  params = run_steps((("data", 1), ("rep", -1)))
  if args.process_id == 0:
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(args.out, **flat)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
