"""Peak RSS of an orbax save while donating steps run on, asynchronous against synchronous.

    python -m experiments.bench.checkpoint_memory --mb 1536

A state of ``--mb`` MB (two float32 leaves) is stepped by a jitted ``x * 1.0001`` with
``donate_argnums=0``, as training steps are; ``CheckpointManager.save`` starts, five more
steps run, and the save is waited for. Each mode runs in its own process; RSS is sampled
every 10 ms. Prints the peak RSS above the state, per mode. This is the measurement behind
``mach_jax.checkpoint.async_saves`` (experiments/bench/NOTES.md, "Memory").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def rss_mb() -> float:
  with open("/proc/self/status") as f:
    return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def one(asynchronous: bool, mb: int) -> dict:
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  n = mb * 2**20 // 8  # Two float32 leaves.
  state = {"a": jnp.full((n,), 1.5), "b": jnp.ones((n,))}
  step = jax.jit(lambda s: jax.tree.map(lambda x: x * 1.0001, s), donate_argnums=0)
  state = jax.block_until_ready(step(state))
  base, peak, done = rss_mb(), [0.0], threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], rss_mb())
      time.sleep(0.01)
  sampler = threading.Thread(target=sample)
  sampler.start()
  with tempfile.TemporaryDirectory() as d:
    manager = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=asynchronous, create=True), item_names=("state",))
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    for _ in range(5):
      state = step(state)
    jax.block_until_ready(state)
    manager.wait_until_finished()
    done.set()
    sampler.join()
  return {"async": asynchronous, "state_mb": mb, "peak_above_state_mb": peak[0] - base}


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--mb", type=int, default=1536, help="state size in MB")
  ap.add_argument("--one", choices=["async", "sync"], help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.one:
    print(json.dumps(one(args.one == "async", args.mb)))
    return []
  rows = []
  for mode in ("async", "sync"):
    out = subprocess.run([sys.executable, "-m", "experiments.bench.checkpoint_memory",
                          "--mb", str(args.mb), "--one", mode], check=True,
                         capture_output=True, text=True, env={**os.environ}).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{mode:>5}: peak RSS {rows[-1]['peak_above_state_mb']:.0f} MB above a "
          f"{args.mb} MB state")
  return rows


if __name__ == "__main__":
  main()
