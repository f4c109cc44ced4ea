"""The benchmarks' timed loop: steps of a ``TrainSetup`` over device batches, waited on."""

from __future__ import annotations

import time


def timed_steps(setup, state, batches, num_steps: int):
  """Run ``num_steps`` train steps cycling over ``batches`` (already on device).

  Waits for each step where the mesh needs it (``sharding.must_sync_each_step``) and for
  the final state, so the time is the steps' own.

  Returns:
    (state, seconds, the last step's metrics).
  """
  import jax

  from mach_jax import sharding

  sync = sharding.must_sync_each_step(setup.mesh)
  metrics = None
  t0 = time.perf_counter()
  for i in range(num_steps):
    state, metrics = setup.train_step(state, batches[i % len(batches)])
    if sync:
      jax.block_until_ready(metrics)
  jax.block_until_ready(state)
  return state, time.perf_counter() - t0, metrics
