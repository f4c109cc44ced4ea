"""The accuracy-memory-time frontier of one side-by-side run: P@1 against model size and time.

    python -m experiments.bench.peers --datasets wordnet \
        --systems mach,full_softmax,napkinxc,omikuji,pecos \
        --point "in32k: model.input_dim=32768" --point "in16k: model.input_dim=16384" \
        --point "shared: model.shared_input=True" --out runs/frontier_wordnet
    python -m experiments.bench.frontier --out runs/frontier_wordnet

Reads OUT/results.csv, written by ``experiments.bench.peers`` (every system trained and
scored in the same run, each in its own process), and writes, per set, OUT/frontier_<set>.png
(P@1 against the model's size on disk and against training time, both on log axes; the
mach-jax points labelled with their parameter counts, the full softmax and the peers marked)
and OUT/frontier.md (the rows by size, each marked when no other system is at least as
accurate and no larger, or no slower). Size on disk is the axis every system has: the
peers report no parameter count.
"""

from __future__ import annotations

import argparse
import csv
import os

PEERS = ("napkinxc", "omikuji", "pecos")


def read_rows(out: str) -> dict[str, list[dict]]:
  """results.csv's rows per set, numbers parsed."""
  path = os.path.join(out, "results.csv")
  if not os.path.exists(path):
    raise SystemExit(f"{path}: not found; run experiments.bench.peers --out {out} first")
  sets: dict[str, list[dict]] = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      for key in ("P@1", "P@5", "train_s", "model_mb", "peak_rss_mb"):
        row[key] = float(row[key])
      row["num_params"] = int(float(row["num_params"])) if row.get("num_params") else 0
      sets.setdefault(row["dataset"], []).append(row)
  return sets


def dominated(row: dict, rows: list[dict], cost: str) -> bool:
  """Whether another row is at least as accurate (P@1) and at most as costly, one strictly."""
  return any(o is not row and o["P@1"] >= row["P@1"] and o[cost] <= row[cost]
             and (o["P@1"] > row["P@1"] or o[cost] < row[cost]) for o in rows)


def table(name: str, rows: list[dict]) -> str:
  lines = [f"### {name}", "", "| system | P@1 | P@5 | model MB | train s | parameters "
           "| peak RSS MB | frontier (size / time) |", "|" + "---|" * 8]
  for r in sorted(rows, key=lambda r: r["model_mb"]):
    marks = " / ".join("yes" if not dominated(r, rows, c) else "–" for c in ("model_mb",
                                                                              "train_s"))
    params = f"{r['num_params'] / 1e6:.1f}M" if r["num_params"] else "–"
    lines.append(f"| {r['system']} | {r['P@1']:.4f} | {r['P@5']:.4f} | {r['model_mb']:.0f} | "
                 f"{r['train_s']:.0f} | {params} | {r['peak_rss_mb']:.0f} | {marks} |")
  changes = [f"- {r['system']}: {r['changes']}" for r in rows if r.get("changes")]
  return "\n".join(lines + ([""] + changes if changes else [])) + "\n"


def plot(name: str, rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  best_peer = max((r["P@1"] for r in rows if r["system"] in PEERS), default=None)
  for ax, cost, label in ((axes[0], "model_mb", "model size on disk (MB)"),
                          (axes[1], "train_s", "training time (s, 2 CPU cores)")):
    for r in rows:
      s = r["system"]
      style = (dict(marker="^", color="tab:gray") if s in PEERS else
               dict(marker="s", color="tab:red") if s == "full_softmax" else
               dict(marker="o", color="tab:blue"))
      ax.scatter(r[cost], r["P@1"], s=40, **style)
      text = s if not r["num_params"] else f"{s} ({r['num_params'] / 1e6:.0f}M)"
      ax.annotate(text, (r[cost], r["P@1"]), fontsize=7, xytext=(4, 3),
                  textcoords="offset points")
    if best_peer is not None:
      ax.axhline(best_peer, color="tab:gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test P@1")
  fig.suptitle(f"{name}: mach-jax points (blue, parameters), full softmax (red), peers (gray; "
               "dashed: the best peer's P@1)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="the folder of an experiments.bench.peers run")
  args = ap.parse_args(argv)
  parts = []
  for name, rows in read_rows(args.out).items():
    plot(name, rows, os.path.join(args.out, f"frontier_{name}.png"))
    parts.append(table(name, rows))
  with open(os.path.join(args.out, "frontier.md"), "w") as f:
    f.write("\n".join(parts))
  print("\n".join(parts))


if __name__ == "__main__":
  main()
