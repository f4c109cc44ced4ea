"""Where a training run's memory goes: its resident set sampled over time, beside its log.

    python -m experiments.bench.memory --out runs/mem_wordnet -- \
        --config experiments/configs/wordnet.py --config.train.num_epochs=1

Everything after ``--`` is passed to ``python -m experiments.train`` (with ``--workdir``
set to OUT/run). Writes OUT/rss.tsv (seconds since start, then RSS, its anonymous and
file-backed parts and its high-water mark so far, in MB), OUT/train.log (the run's log,
each line stamped with the same clock) and OUT/summary.json: the peak RSS, when it was
reached, the state's bytes (parameters + optimizer state, from results.json) and their
ratio, against the bound ``peak <= 1.5 x state + 0.5 GB``, and the sampled peaks of the
two parts. The file-backed part is mostly jaxlib's code (its
``libjax_common.so``: 144 of 170 MB after the first jitted op with jaxlib 0.10.2;
experiments/bench/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

# The resident set, its anonymous and file parts, and its high-water mark so far (when it
# rises says when the peak was reached, even between two samples of the others).
FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def rss_mb(pid: int) -> tuple[float, ...]:
  """``FIELDS`` of ``pid`` and its children, summed, in MB (zeros once it has exited)."""
  total = dict.fromkeys(FIELDS, 0.0)
  try:
    pids = [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
  except OSError:
    return (0.0,) * len(FIELDS)
  for p in pids:
    try:
      for line in open(f"/proc/{p}/status"):
        key = line.split(":", 1)[0]
        if key in total:
          total[key] += int(line.split()[1]) / 1024
    except OSError:
      pass
  return tuple(total[k] for k in FIELDS)


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
  samples: list[tuple[float, tuple[float, ...]]] = []

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
    f.write("seconds\t" + "\t".join(f"{k}_MB" for k in FIELDS) + "\n")
    f.writelines(f"{t:.1f}\t" + "\t".join(f"{v:.0f}" for v in m) + "\n" for t, m in samples)
  if proc.returncode:
    raise SystemExit(f"training exited with {proc.returncode}; see {args.out}/train.log")
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  state_mb = res["state_bytes"] / 2**20
  peak_mb = res["peak_rss_bytes"] / 2**20
  sampled = lambda i: max(m[i] for _, m in samples)
  summary = {"peak_rss_mb": peak_mb, "sampled_peak_mb": sampled(0),
             "sampled_peak_anon_mb": sampled(1), "sampled_peak_file_mb": sampled(2),
             "peak_reached_s": next(t for t, m in samples if m[3] >= sampled(3)),
             "state_mb": state_mb, "peak_over_state": peak_mb / state_mb,
             "bound_mb": 1.5 * state_mb + 512, "within_bound": peak_mb <= 1.5 * state_mb + 512,
             "args": rest}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps(summary, indent=2))
  return summary


if __name__ == "__main__":
  main()
