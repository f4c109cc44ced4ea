"""Print a Markdown table of finished runs, from their ``results.json`` files.

    python -m experiments.table runs/bibtex runs/delicious runs/corel5k

One row per run and estimator (the run's reported estimator, plus ``--estimators``). The
training time of a refitted run (``train.refit``) counts its selection run's.
"""

from __future__ import annotations

import argparse
import json
import os


def rows(workdir: str, estimators: list[str]) -> list[str]:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise SystemExit(f"{path}: not found (run experiments.train with --workdir {workdir})")
  with open(path) as f:
    r = json.load(f)
  if "by_estimator" not in r:
    raise SystemExit(f"{path}: the run read no test split (config.eval.final_test=False, or "
                     "no config.data.test): it has no test figures to list")
  m = r["config"]["model"]
  name = os.path.basename(os.path.normpath(workdir))
  out = []
  for est in [r["estimator"]] + [e for e in estimators if e != r["estimator"]]:
    if est not in r["by_estimator"]:
      raise SystemExit(f"{path}: estimator {est!r} was not evaluated")
    e = r["by_estimator"][est]
    seconds = r["train_seconds"] + r.get("refit", {}).get("select_train_seconds", 0)
    out.append(f"| {name} | R={m['R']} B={m['B']} H={m['hidden'][0]} {m['loss']} | {est} "
               f"| {e['P@1']:.3f} | {e['P@3']:.3f} | {e['P@5']:.3f} | {e['nDCG@5']:.3f} "
               f"| {e['PSP@5']:.3f} | {seconds:.0f} | {r['examples_per_second']:.0f} "
               f"| {r['num_params'] / 1e6:.1f}M | {r['num_params_full_softmax'] / 1e6:.1f}M |")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--estimators", default="log_mean",
                      help="comma-separated extra estimators to list (default: log_mean)")
  args = parser.parse_args()
  extra = [e for e in args.estimators.split(",") if e]
  print("| run | model | estimator | P@1 | P@3 | P@5 | nDCG@5 | PSP@5 | train s "
        "| train ex/s | params | full softmax |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for w in args.workdirs:
    print("\n".join(rows(w, extra)))


if __name__ == "__main__":
  main()
