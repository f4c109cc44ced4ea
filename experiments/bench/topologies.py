"""One training command on several layouts of processes and devices: the same numbers?

    python -m experiments.bench.topologies --out runs/topologies --layouts 1x4,2x2,1x1 \
        -- --config experiments/configs/bibtex.py --config.train.num_epochs=2 \
        --config.checkpoint.every_steps=13

Each layout ``PxD`` runs the command after ``--`` as P processes of D simulated CPU devices
each (on this machine, talking over a localhost port, as on P hosts; the 'rep' axis spans
all P·D devices), in OUT/PxD, one layout after the other, with every checkpoint kept. Then
each layout is compared with the first: the state of every checkpoint step both wrote
(parameters and optimizer state) and the exported model folder, leaf by leaf, and the
test metrics. A layout whose devices hold as many repetitions each as the first's runs the
same per-device program and should match it bit for bit (docs/scaling.md); one with another
count of repetitions a device may not (XLA:CPU picks its GEMM kernels by shape). Writes
OUT/topologies.json and prints a table; exits non-zero when a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import numpy as np

from experiments.bench import faults

METRICS = ("P@1", "P@3", "P@5", "nDCG@5", "steps")


def checkpoint_state(workdir: str, step: int) -> dict[str, np.ndarray]:
  """A checkpoint's state as NumPy arrays by leaf path, read without a target (so on any
  number of devices)."""
  import jax
  import orbax.checkpoint as ocp

  # (Absolute: orbax reads no metadata through a relative path.)
  path = os.path.abspath(os.path.join(workdir, "checkpoints", str(step), "state"))
  reader = ocp.PyTreeCheckpointer()
  tree = reader.metadata(path).item_metadata.tree
  state = reader.restore(path, restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(state)}


def difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
  """How two trees of arrays (by leaf path) differ: whether bit for bit equal, the largest
  |a - b| and the leaves that differ.

  Raises:
    ValueError: the trees have other leaves or shapes (not the same model).
  """
  if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
    raise ValueError(f"not the same tree: {sorted(a)} {[a[k].shape for k in sorted(a)]} "
                     f"against {sorted(b)} {[b[k].shape for k in sorted(b)]}")
  differ = [k for k in a if not np.array_equal(a[k], b[k])]
  largest = max((float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
                 for k in differ), default=0.0)
  return {"bitwise": not differ, "max_abs": largest, "leaves": differ}


def compare(first: str, other: str) -> dict:
  """``other``'s run against ``first``'s: every checkpoint step both kept, the model folder,
  the test metrics."""
  steps = sorted(set(_steps(first)) & set(_steps(other)))
  per_step = {s: difference(checkpoint_state(first, s), checkpoint_state(other, s))
              for s in steps}
  diverged = next((s for s in steps if not per_step[s]["bitwise"]), None)
  a, b = (json.load(open(os.path.join(w, "results.json"))) for w in (first, other))
  return {"steps": steps, "first_step_differing": diverged,
          "max_abs_checkpoints": max((d["max_abs"] for d in per_step.values()), default=0.0),
          "model": difference(faults.params(first), faults.params(other)),
          "metrics": {m: (a.get(m), b.get(m)) for m in METRICS}}


def _steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/topologies")
  parser.add_argument("--layouts", default="1x4,2x2,1x1",
                      help="comma-separated PROCESSESxDEVICES; each is compared with the first")
  parser.add_argument("flags", nargs=argparse.REMAINDER,
                      help="after --: the experiments.train flags (--config ... and overrides)")
  args = parser.parse_args()
  flags = [f for f in args.flags if f != "--"] + ["--config.checkpoint.keep=1000"]
  try:
    layouts = [tuple(int(n) for n in s.split("x")) for s in args.layouts.split(",")]
    assert all(len(t) == 2 and min(t) >= 1 for t in layouts)
  except (ValueError, AssertionError):
    raise SystemExit(f"--layouts={args.layouts}: expected e.g. 1x4,2x2 (PROCESSESxDEVICES)")
  if os.path.isdir(args.out):  # A workdir left by an earlier run would be resumed.
    shutil.rmtree(args.out)
  runs, report = [], {"flags": flags, "layouts": {}}
  for processes, devices in layouts:
    workdir = os.path.join(args.out, f"{processes}x{devices}")
    t0 = time.time()
    rc, log = faults.finish(faults.launch(workdir, flags, processes, devices))
    if rc:
      raise SystemExit(f"{processes}x{devices} failed (rc {rc}):\n{log[-3000:]}")
    runs.append(workdir)
    report["layouts"][f"{processes}x{devices}"] = {"wall_seconds": time.time() - t0}
  first = os.path.basename(runs[0])
  print(f"against {first}:\n| layout | checkpoints bitwise | first step differing | "
        "max abs diff | model bitwise | P@1 | wall s |\n|---|---|---|---|---|---|---|")
  for workdir in runs:
    name = os.path.basename(workdir)
    row = report["layouts"][name]
    row.update(compare(runs[0], workdir))
    largest = max(row["max_abs_checkpoints"], row["model"]["max_abs"])
    print(f"| {name} | {row['first_step_differing'] is None} ({len(row['steps'])} steps) | "
          f"{row['first_step_differing']} | {largest:.3g} | {row['model']['bitwise']} | "
          f"{row['metrics']['P@1'][1]:.4f} | {row['wall_seconds']:.1f} |")
  with open(os.path.join(args.out, "topologies.json"), "w") as f:
    json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
