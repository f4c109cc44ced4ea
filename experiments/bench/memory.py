"""Where a training run's memory goes: its resident set sampled over time, beside its log.

    python -m experiments.bench.memory --out runs/mem_wordnet -- \
        --config experiments/configs/wordnet.py --config.train.num_epochs=1

Everything after ``--`` is passed to ``python -m experiments.train`` (with ``--workdir``
set to OUT/run). Writes OUT/rss.tsv (seconds since start, RSS in MB), OUT/train.log (the
run's log, each line stamped with the same clock) and OUT/summary.json: the peak RSS, the
state's bytes (parameters + optimizer state, from results.json) and their ratio, against
the bound ``peak <= 1.5 x state + 0.5 GB``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def rss_mb(pid: int) -> float:
  """Resident set of ``pid`` and its children, in MB (0 once it has exited)."""
  total = 0.0
  try:
    pids = [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
  except OSError:
    return 0.0
  for p in pids:
    try:
      for line in open(f"/proc/{p}/status"):
        if line.startswith("VmRSS:"):
          total += int(line.split()[1]) / 1024
    except OSError:
      pass
  return total


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
  args, rest = ap.parse_known_args(argv)
  rest = [a for a in rest if a != "--"]
  os.makedirs(args.out, exist_ok=True)
  workdir = os.path.join(args.out, "run")
  t0 = time.time()
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *rest,
                           "--workdir", workdir, "--config.train.progress_bar=False"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
  samples: list[tuple[float, float]] = []

  def sample():
    while proc.poll() is None:
      samples.append((time.time() - t0, rss_mb(proc.pid)))
      time.sleep(args.interval)
  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  with open(os.path.join(args.out, "train.log"), "w") as log:
    for line in proc.stdout:
      log.write(f"{time.time() - t0:8.1f}  {line}")
  proc.wait()
  thread.join()
  with open(os.path.join(args.out, "rss.tsv"), "w") as f:
    f.writelines(f"{t:.1f}\t{m:.0f}\n" for t, m in samples)
  if proc.returncode:
    raise SystemExit(f"training exited with {proc.returncode}; see {args.out}/train.log")
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  state_mb = res["state_bytes"] / 2**20
  peak_mb = res["peak_rss_bytes"] / 2**20
  summary = {"peak_rss_mb": peak_mb, "sampled_peak_mb": max(m for _, m in samples),
             "state_mb": state_mb, "peak_over_state": peak_mb / state_mb,
             "bound_mb": 1.5 * state_mb + 512, "within_bound": peak_mb <= 1.5 * state_mb + 512,
             "args": rest}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps(summary, indent=2))
  return summary


if __name__ == "__main__":
  main()
