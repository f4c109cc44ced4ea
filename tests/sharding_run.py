"""A worker of a multi-process run: a few sharded train steps of the tiny model.

    python tests/sharding_run.py --process_id 0 --num_processes 2 --port 12355 --out p0.npz

Every process builds the same batches in the same order (tests.helpers.run_steps); the
mesh's 'rep' axis spans all processes' devices. Process 0 writes the final parameters
(gathered) to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys


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
  from tests.helpers import flat, run_steps

  sharding.initialize_distributed(ConfigDict(dict(
      enabled=True, coordinator_address=f"127.0.0.1:{args.port}",
      num_processes=args.num_processes, process_id=args.process_id,
      heartbeat_timeout_seconds=100)))
  assert jax.process_count() == args.num_processes, jax.process_count()
  params = run_steps((("data", 1), ("rep", -1)))
  if args.process_id == 0:
    np.savez(args.out, **flat(params))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
