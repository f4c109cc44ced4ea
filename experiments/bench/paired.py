"""How far apart the systems of one side-by-side run are, point by point.

    python -m experiments.bench.paired --out runs/peers_wn_refit --dataset wordnet
    python -m experiments.bench.paired --out runs/peers_debian_refit --dataset debian \
        --reference mach_text

Reads the top 5 each system of an ``experiments.bench.peers`` run saved
(``OUT/<set>/<system>/preds.npy``) and the set's test labels, and compares every system with
the reference on the same test points: P@1 and P@5, their differences with a 95% interval
(the normal interval of the mean of the paired per-point differences), and for P@1 the
points only one of the two got right, with the exact two-sided sign test's p-value on them
(McNemar's exact test). Two systems whose P@1 differs by a few points of a test set of
thousands are tied until that p-value is small. Prints a Markdown table; ``--json`` writes
the rows too.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import scipy.sparse as sp
from scipy import stats

from experiments.bench.peer_worker import PREDS
from experiments.bench.peers import ROOT, data_paths


def hits(preds: np.ndarray, Y: sp.csr_matrix) -> np.ndarray:
  """bool [n, k]: whether each predicted id is one of its point's labels (ids < 0: padding)."""
  if preds.shape[0] != Y.shape[0]:
    raise ValueError(f"{preds.shape[0]} predictions for {Y.shape[0]} test points")
  Y = Y.tocsr()
  out = np.zeros(preds.shape, bool)
  for i in range(preds.shape[0]):
    row = Y.indices[Y.indptr[i]:Y.indptr[i + 1]]
    out[i] = np.isin(preds[i], row) & (preds[i] >= 0)
  return out


def compare(hits_a: np.ndarray, hits_ref: np.ndarray) -> dict:
  """System a against the reference on the same points (``hits`` of each, top 5)."""
  n = hits_a.shape[0]
  row = {"n": n}
  for k in (1, 5):
    pa, pr = hits_a[:, :k].sum(1) / k, hits_ref[:, :k].sum(1) / k
    d = pa - pr
    half = 1.96 * d.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    row.update({f"P@{k}": pa.mean(), f"P@{k}_diff": d.mean(),
                f"P@{k}_diff_lo": d.mean() - half, f"P@{k}_diff_hi": d.mean() + half})
  only_a = int((hits_a[:, 0] & ~hits_ref[:, 0]).sum())
  only_ref = int((~hits_a[:, 0] & hits_ref[:, 0]).sum())
  row.update(only_a=only_a, only_ref=only_ref,
             sign_p=(stats.binomtest(only_a, only_a + only_ref).pvalue
                     if only_a + only_ref else 1.0))
  return row


def table(rows: dict[str, dict], reference: str) -> str:
  lines = [f"| system | P@1 | P@5 | P@1 − {reference} (95%) | P@1: right where {reference} "
           f"was not / the reverse (sign test p) | P@5 − {reference} (95%) |",
           "|" + "---|" * 6]
  for name, r in rows.items():
    if name == reference:
      lines.append(f"| {name} | {r['P@1']:.4f} | {r['P@5']:.4f} | – | – | – |")
      continue
    lines.append(
        f"| {name} | {r['P@1']:.4f} | {r['P@5']:.4f} | {r['P@1_diff']:+.4f} "
        f"({r['P@1_diff_lo']:+.4f}, {r['P@1_diff_hi']:+.4f}) | {r['only_a']} / "
        f"{r['only_ref']} (p = {r['sign_p']:.2g}) | {r['P@5_diff']:+.4f} "
        f"({r['P@5_diff_lo']:+.4f}, {r['P@5_diff_hi']:+.4f}) |")
  return "\n".join(lines)


def main(argv=None) -> dict[str, dict]:
  from mach_jax.data.xc import read_xc
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="an experiments.bench.peers --out folder")
  ap.add_argument("--dataset", required=True)
  ap.add_argument("--reference", default="mach_text", help="the system the others are "
                  "compared with")
  ap.add_argument("--data_root", default=os.path.join(ROOT, "..", "shared", "data"))
  ap.add_argument("--built_root", default=os.path.join(ROOT, "runs", "data"))
  ap.add_argument("--json", default="", help="also write the rows here")
  args = ap.parse_args(argv)
  folder = os.path.join(args.out, args.dataset)
  systems = sorted(s for s in os.listdir(folder)
                   if os.path.exists(os.path.join(folder, s, PREDS[False])))
  if args.reference not in systems:
    raise SystemExit(f"--reference {args.reference}: {folder} holds predictions of "
                     f"{systems} only")
  Y = read_xc(data_paths(args.data_root, args.built_root, args.dataset)[1]).Y
  h = {s: hits(np.load(os.path.join(folder, s, PREDS[False]), allow_pickle=False), Y)
       for s in systems}
  rows = {s: compare(h[s], h[args.reference]) for s in systems}
  print(table(rows, args.reference))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
