"""Plots of a sweep directory (``experiments.sweep``'s results.jsonl) as PNGs.

    python -m experiments.plots runs/sweep_bibtex [--estimator mean] [--peers results.csv \
        --dataset bibtex]

Writes OUT/summary.md (a table of every point) and draws OUT/p_vs_r.png (P@1 and P@5
against R, one line per B: the paper's figure) and OUT/frontier.png (P@1 against
parameter count; the full softmax -- hash_family=identity -- as a star, and peers as
crosses from an optional CSV: experiments.bench.peers' results.csv, or any CSV with
columns system, P@1 and num_params or model_mb). Peers without a parameter count (the tree
models) are placed at their saved model size / 4 bytes, float32-equivalent
parameters; ``--dataset`` keeps the CSV rows of one set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(out: str) -> list[dict]:
  path = os.path.join(out, "results.jsonl")
  if not os.path.exists(path):
    raise SystemExit(f"{path}: not found (run experiments.sweep with --out {out})")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


OWN_SYSTEMS = ("mach", "full_softmax")  # The peers benchmark's own rows: the sweep has them.


def peer_points(path: str, dataset: str | None = None) -> list[tuple[str, float, float]]:
  """(system, parameters, P@1) of each CSV row of another system (of ``dataset`` only)."""
  points = []
  with open(path) as f:
    for line, row in enumerate(csv.DictReader(f), start=2):
      if dataset and row.get("dataset", dataset) != dataset or row["system"] in OWN_SYSTEMS:
        continue
      if row.get("num_params"):
        n = float(row["num_params"])
      elif row.get("model_mb"):
        n = float(row["model_mb"]) * 2**20 / 4
      else:
        raise ValueError(f"{path}:{line}: needs num_params or model_mb")
      points.append((row["system"], n, float(row["P@1"])))
  if not points:
    raise ValueError(f"{path}: no rows" + (f" for dataset {dataset!r}" if dataset else ""))
  return points


def plot(out: str, estimator: str | None = None, peers: str | None = None,
         dataset: str | None = None) -> list[str]:
  records = load(out)
  est = estimator or records[0]["estimator"]
  mach = [r for r in records if r["hash_spec"]["family"] != "identity"]
  full = [r for r in records if r["hash_spec"]["family"] == "identity"]
  name = os.path.basename(os.path.normpath(out))

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
  for metric, ax in zip(("P@1", "P@5"), axes):
    for B in sorted({r["hash_spec"]["B"] for r in mach}):
      pts = sorted((r["hash_spec"]["R"], r["by_estimator"][est][metric])
                   for r in mach if r["hash_spec"]["B"] == B)
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"B={B}")
    for r in full:
      ax.axhline(r["by_estimator"][est][metric], color="k", ls="--", label="full softmax")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("R (repetitions)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{name}: {metric.split('@')[0]}@k against R ({est} estimator)")
  fig.tight_layout()
  p1 = os.path.join(out, "p_vs_r.png")
  fig.savefig(p1, dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.scatter([r["num_params"] for r in mach], [r["by_estimator"][est]["P@1"] for r in mach],
             label="MACH (R, B grid)")
  for r in full:
    ax.scatter([r["num_params"]], [r["by_estimator"][est]["P@1"]], marker="*", s=200,
               color="k", label="full softmax")
  if peers:
    for system, n, top1 in peer_points(peers, dataset):
      ax.scatter([n], [top1], marker="x", s=80)
      ax.annotate(system, (n, top1), fontsize=8)
  ax.set_xscale("log")
  ax.set_xlabel("parameters")
  ax.set_ylabel("P@1")
  ax.set_title(f"{name}: memory-accuracy frontier ({est} estimator)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  p2 = os.path.join(out, "frontier.png")
  fig.savefig(p2, dpi=120)
  plt.close(fig)
  return [p1, p2]


def summary(out: str) -> str:
  """OUT/summary.md: one row per point, P@1 / P@5 of every estimator it evaluated."""
  records = load(out)
  ests = list(records[0]["by_estimator"])
  lines = ["| overrides | params | train s | " + " | ".join(f"{e} P@1 / P@5" for e in ests)
           + " |", "|" + "---|" * (3 + len(ests))]
  for r in records:
    cells = [f"{r['by_estimator'][e]['P@1']:.3f} / {r['by_estimator'][e]['P@5']:.3f}"
             for e in ests]
    over = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r["overrides"].items())
    lines.append(f"| {over} | {r['num_params'] / 1e6:.2f}M | {r['train_seconds']:.0f} | "
                 + " | ".join(cells) + " |")
  path = os.path.join(out, "summary.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--estimator", default=None)
  parser.add_argument("--peers", default=None, help="peers' results.csv to mark")
  parser.add_argument("--dataset", default=None, help="rows of --peers to keep")
  args = parser.parse_args()
  for path in [*plot(args.out, args.estimator, args.peers, args.dataset), summary(args.out)]:
    print(path)


if __name__ == "__main__":
  main()
