"""Kill the tools that copy a model folder, and check that no half folder is ever left.

    python -m experiments.train --config experiments/configs/bibtex.py --workdir runs/bib \
        --config.train.num_epochs=1
    python -m experiments.bench.copy_kills --model runs/bib/model --trials 10 \
        --out runs/copy_kills                                   # writes copy_kills.json

Two operations write a new model folder from an old one: ``quantize`` (an int8 copy,
``python -m experiments.quantize``) and ``widen`` (the folder over a grown catalogue,
``python -m experiments.widen``). Each is run once uninterrupted (the reference), then
``--trials`` times killed with SIGKILL and rerun with the same command. Half the trials are
killed at a uniformly random moment of the whole command (start-up included: most kills
land before any write), the other half while the new folder is being written (at a
uniformly random moment between ``OUT.partial`` appearing and ``OUT`` appearing in the
reference, polled every 2 ms). After each kill the folder ``OUT`` must be absent, or
complete and equal to the reference (it loads, every file's digest checked, with the same
``model.json`` and parameters bit for bit); after the rerun it must be present and equal,
with no ``OUT.partial`` beside it. A rerun that finds ``OUT`` complete is refused (``OUT
exists``), as the tool refuses to overwrite a folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def command(op: str, model: str, out: str, num_classes: int) -> list[str]:
  if op == "quantize":
    return [sys.executable, "-m", "experiments.quantize", "--model", model, "--out", out]
  return [sys.executable, "-m", "experiments.widen", "--model", model, "--out", out,
          "--num_classes", str(num_classes)]


def run(cmd: list[str], out: str, kill_at: float | None = None,
        after_partial: bool = False) -> dict:
  """Run ``cmd``; with ``kill_at``, SIGKILL it that many seconds after its start (or after
  ``out.partial`` appears, with ``after_partial``). Returns what happened and when."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  partial_seen = out_seen = None
  while proc.poll() is None:
    now = time.perf_counter()
    if partial_seen is None and os.path.isdir(out + ".partial"):
      partial_seen = now - start
    if out_seen is None and os.path.isdir(out):
      out_seen = now - start
    base = partial_seen if after_partial else 0.0
    if kill_at is not None and base is not None and now - start >= base + kill_at:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.002)
  output = proc.communicate()[0]
  end = time.perf_counter() - start
  return {"returncode": proc.returncode, "seconds": end, "partial_seen": partial_seen,
          "out_seen": out_seen, "output": output[-400:]}


def snapshot(folder: str) -> tuple[dict, dict[str, np.ndarray]]:
  """``model.json`` and the parameters of ``folder``, loaded with every digest checked."""
  import jax

  from mach_jax import bundle
  info, _, params = bundle.load(folder)
  leaves = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
  return {k: v for k, v in info.items() if k != "files"}, leaves


def equal(folder: str, reference: tuple[dict, dict]) -> bool:
  info, leaves = snapshot(folder)
  return (info == reference[0] and leaves.keys() == reference[1].keys()
          and all(np.array_equal(leaves[k], reference[1][k]) for k in leaves))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help="A model folder (float32 table).")
  parser.add_argument("--trials", type=int, default=10, help="Kills per operation.")
  parser.add_argument("--ops", default="quantize,widen")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  os.makedirs(args.out, exist_ok=True)
  from mach_jax import bundle
  num_classes = 2 * int(bundle.read_info(args.model)["num_classes"])  # For widen.
  report = {"model": os.path.abspath(args.model), "trials": args.trials, "seed": args.seed,
            "ops": {}}
  for op in args.ops.split(","):
    ref_dir = os.path.join(args.out, f"{op}_reference")
    shutil.rmtree(ref_dir, ignore_errors=True)
    ref = run(command(op, args.model, ref_dir, num_classes), ref_dir)
    if ref["returncode"] != 0:
      raise SystemExit(f"{op}: the reference run failed: {ref['output']}")
    if ref["partial_seen"] is None or ref["out_seen"] is None:
      raise SystemExit(f"{op}: {ref_dir}.partial was never seen: the writing is too short to "
                       "be killed in it; pass a larger --model")
    writing = ref["out_seen"] - ref["partial_seen"]  # From OUT.partial to OUT, polled.
    reference = snapshot(ref_dir)
    trials = []
    for i in range(args.trials):
      out = os.path.join(args.out, f"{op}_{i}")
      for leftover in (out, out + ".partial"):
        shutil.rmtree(leftover, ignore_errors=True)
      during = i % 2 == 1
      at = rng.uniform(0, writing if during else ref["seconds"])
      killed = run(command(op, args.model, out, num_classes), out, at, after_partial=during)
      t = {"mode": "writing" if during else "random", "kill_at": round(at, 4),
           "finished_before_kill": killed["returncode"] == 0,
           "partial_left": os.path.isdir(out + ".partial"), "out_after_kill": os.path.isdir(out)}
      t["out_after_kill_equal"] = equal(out, reference) if t["out_after_kill"] else None
      again = run(command(op, args.model, out, num_classes), out)
      t["rerun_returncode"] = again["returncode"]
      t["rerun_refused_exists"] = again["returncode"] != 0 and "exists" in again["output"]
      t["partial_after_rerun"] = os.path.isdir(out + ".partial")
      t["equal"] = os.path.isdir(out) and equal(out, reference)
      t["ok"] = (t["equal"] and not t["partial_after_rerun"]
                 and t["out_after_kill_equal"] is not False
                 and (again["returncode"] == 0 or (t["out_after_kill"]
                                                   and t["rerun_refused_exists"])))
      trials.append(t)
      print(json.dumps({"op": op, "trial": i, **t}), flush=True)
      shutil.rmtree(out, ignore_errors=True)
    report["ops"][op] = {"reference_seconds": round(ref["seconds"], 3),
                         "writing_seconds": round(writing, 3),
                         "ok": sum(t["ok"] for t in trials), "trials": trials,
                         "killed_while_partial": sum(t["partial_left"] for t in trials),
                         "complete_at_kill": sum(bool(t["out_after_kill"]) for t in trials)}
    shutil.rmtree(ref_dir, ignore_errors=True)
  with open(os.path.join(args.out, "copy_kills.json"), "w") as f:
    json.dump(report, f, indent=2)
  for op, r in report["ops"].items():
    print(f"{op}: {r['ok']}/{len(r['trials'])} ended equal to the reference; killed with "
          f"the new folder half-written {r['killed_while_partial']}, after it was complete "
          f"{r['complete_at_kill']}; reference {r['reference_seconds']} s "
          f"(writing {r['writing_seconds']} s)")


if __name__ == "__main__":
  main()
