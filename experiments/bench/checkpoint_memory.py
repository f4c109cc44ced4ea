"""Peak RSS of an orbax save while donating steps run on (asynchronous, synchronous, the
library's own store), and of reading a saved state back (whole, or in place).

    python -m experiments.bench.checkpoint_memory --mb 1536
    python -m experiments.bench.checkpoint_memory --mb 1536 --modes restore_whole,restore_in_place
    python -m experiments.bench.checkpoint_memory --mb 800 --modes restore_whole,resume
    python -m experiments.bench.checkpoint_memory --mb 768 --modes restore_in_place --piece_mb 32,8

A state of ``--mb`` MB (two float32 leaves of standard-normal values, as trained weights
look to a compressor; ``--constant`` for constant ones) is stepped by a jitted
``x * 1.0001`` with ``donate_argnums=0``, as training steps are; a save starts, five more
steps run, and the save is waited for. Modes: ``async`` and ``sync`` save with orbax's
default ``StandardSave`` (zstd-compressed); ``library`` with ``mach_jax.checkpoint.save``.
``restore_whole`` and ``restore_in_place`` save with the library, then read the state back
as a run going back to an earlier state does: the state dropped and restored by
``checkpoint.restore_latest``, or read into its own arrays by ``checkpoint.restore_in_place``
(``host_memory.release`` first, so that neither starts from memory the save left);
``resume`` drops the state and reads it back as a resuming run does (``restore_latest``
on an abstract ``TrainState``: in place, into arrays it allocates);
``--piece_mb`` sets the pieces ``restore_in_place`` reads (``array_store.PIECE_BYTES``),
a row per size; a restore's row also gives the RSS it left above the state when it
returned (memory freed after its ``host_memory.release`` stays resident).
Each mode runs in its own process; RSS is sampled every 10 ms. Prints the peak RSS above
the state, the save's (or the restore's) seconds and the bytes on disk, per mode. The
measurement behind ``mach_jax.checkpoint.async_saves``, ``arrays_handler`` and
``restore_in_place`` (experiments/bench/NOTES.md, "Memory").
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

MODES = ("async", "sync", "library", "restore_whole", "restore_in_place", "resume")


def rss_mb() -> float:
  with open("/proc/self/status") as f:
    return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


class Peak:
  """RSS sampled every 10 ms from entering until ``stop`` (or leaving): ``above``, the
  peak above the RSS on entering, in MB, and ``seconds``."""

  def __enter__(self):
    self.base, self.peak, self._done = rss_mb(), 0.0, threading.Event()
    self._thread = threading.Thread(target=self._sample)
    self._thread.start()
    self._start = time.perf_counter()
    return self

  def _sample(self):
    while not self._done.is_set():
      self.peak = max(self.peak, rss_mb())
      time.sleep(0.01)

  def stop(self):
    if not self._done.is_set():
      self.seconds = time.perf_counter() - self._start
      self._done.set()
      self._thread.join()
      self.above = self.peak - self.base

  def __exit__(self, *exc):
    self.stop()


def _disk_mb(directory: str) -> float:
  return sum(os.path.getsize(os.path.join(p, f))
             for p, _, fs in os.walk(directory) for f in fs) / 2**20


def one(mode: str, mb: int, constant: bool, piece_mb: int = 0) -> dict:
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from mach_jax import checkpoint, initializers

  rows = mb * 2**20 // 8 // 1024  # Two float32 leaves of [rows, 1024].
  if constant:
    state = {"a": jnp.full((rows, 1024), 1.5), "b": jnp.ones((rows, 1024))}
  else:  # Drawn in blocks: no whole-size temporaries left in the allocator's pools.
    draw = jax.jit(initializers.normal(1.0), static_argnums=1)
    state = {k: draw(jax.random.key(i), (rows, 1024)) for i, k in enumerate("ab")}
  step = jax.jit(lambda s: jax.tree.map(lambda x: x * 1.0001, s), donate_argnums=0)
  state = jax.block_until_ready(step(state))
  if mode.startswith("restore") or mode == "resume":
    return restore(mode, mb, state, piece_mb)
  with tempfile.TemporaryDirectory() as d, Peak() as peak:
    if mode == "library":
      manager = checkpoint.make_manager(d)
      checkpoint.save(manager, 1, state, {"step": 1})
    else:
      manager = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(
          enable_async_checkpointing=mode == "async", create=True), item_names=("state",))
      manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    for _ in range(5):
      state = step(state)
    jax.block_until_ready(state)
    manager.wait_until_finished()
    peak.stop()
    disk = _disk_mb(d)
  return {"mode": mode, "state_mb": mb, "constant": constant,
          "peak_above_state_mb": peak.above, "seconds": peak.seconds, "disk_mb": disk}


def restore(mode: str, mb: int, state, piece_mb: int = 0) -> dict:
  """Peak RSS above ``state`` while it is read back from a checkpoint of itself (in place:
  in pieces of ``piece_mb`` MB, 0 for the library's ``PIECE_BYTES``)."""
  import jax

  from mach_jax import array_store, checkpoint, host_memory
  if piece_mb:
    array_store.PIECE_BYTES = piece_mb << 20
  from mach_jax.state import TrainState
  state = TrainState(step=None, params=state, opt_state=None, table_opt_state=None)
  with tempfile.TemporaryDirectory() as d:
    manager = checkpoint.make_manager(d)
    checkpoint.save(manager, 1, state, {"step": 1})
    target = checkpoint.abstract_like(state)
    host_memory.release()
    with Peak() as peak:
      if mode in ("restore_whole", "resume"):
        state = None
        state = checkpoint.restore_latest(manager, target, only=1,
                                          in_place=mode == "resume").state
      else:
        state = checkpoint.restore_in_place(manager, 1, state)
      after = rss_mb() - peak.base  # What the restore left resident when it returned.
      jax.block_until_ready(state)
    disk = _disk_mb(d)
  return {"mode": mode, "state_mb": mb, "constant": False,
          **({"piece_mb": array_store.PIECE_BYTES >> 20} if mode == "restore_in_place" else {}),
          "peak_above_state_mb": peak.above, "after_mb": after, "seconds": peak.seconds,
          "disk_mb": disk}


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--mb", type=int, default=1536, help="state size in MB")
  ap.add_argument("--constant", action="store_true",
                  help="constant-valued leaves (compress to nothing) instead of normal ones")
  ap.add_argument("--modes", default="async,sync,library",
                  help="comma-separated: async, sync (orbax defaults), library, "
                  "restore_whole, restore_in_place, resume")
  ap.add_argument("--piece_mb", default="0",
                  help="comma-separated piece sizes in MB for restore_in_place (0: the "
                  "library's array_store.PIECE_BYTES)")
  ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.one:
    print(json.dumps(one(args.one, args.mb, args.constant, int(args.piece_mb))))
    return []
  rows = []
  for mode in args.modes.split(","):
    for piece_mb in (args.piece_mb.split(",") if mode == "restore_in_place" else ["0"]):
      out = subprocess.run([sys.executable, "-m", "experiments.bench.checkpoint_memory",
                            "--mb", str(args.mb), "--one", mode, "--piece_mb", piece_mb]
                           + ["--constant"] * args.constant, check=True,
                           capture_output=True, text=True, env={**os.environ}).stdout
      rows.append(json.loads(out.strip().splitlines()[-1]))
      r = rows[-1]
      pieces = f" (pieces of {r['piece_mb']} MB)" if "piece_mb" in r else ""
      after = f", {r['after_mb']:.0f} MB left on return" if "after_mb" in r else ""
      print(f"{mode:>16}{pieces}: peak RSS {r['peak_above_state_mb']:.0f} MB above a "
            f"{args.mb} MB state{after}, {r['seconds']:.1f} s, {r['disk_mb']:.0f} MB on disk")
  return rows


if __name__ == "__main__":
  main()
