"""A few sharded train steps, callable in-process or as a worker of a multi-process run.

    python tests/sharding_run.py --process_id 0 --num_processes 2 --port 12355 --out p0.npz

Every process builds the same batches in the same order; the mesh's 'rep' axis spans all
processes' devices. Process 0 writes the final parameters (gathered) to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys


def run_steps(mesh_spec, num_steps: int = 3, R: int = 8):
  """Train ``num_steps`` steps of a tiny model on ``mesh_spec``; returns params as NumPy."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from mach_jax import data as data_lib, sharding, train
  from mach_jax.data import batching
  from tests.test_train import tiny_config

  c = tiny_config()
  c.model.R = R
  tr, _ = data_lib.load(c.data)
  spec = train.hash_spec(c, tr.num_labels)
  model = train.make_model(c, tr.num_features)
  tx = train.make_optimizer(c.optimizer, 100)
  mesh = sharding.make_mesh(mesh_spec, R, c.train.batch_size)
  shards = mesh.shape[sharding.DATA_AXIS]
  batches = list(batching.iterate_batches(tr.X, tr.Y, c.train.batch_size, shuffle=True,
                                          num_shards=shards))[:num_steps]
  state = train.init_state(model, tx, jax.random.key(0), batches[0], mesh)
  step = train.make_train_step(model, tx, spec, c.model.loss, mesh, state, batches[0])
  for b in batches:
    state, m = step(state, sharding.put(b, sharding.batch_shardings(mesh, b)))
    if train.must_sync_each_step(mesh):
      jax.block_until_ready(m)
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
