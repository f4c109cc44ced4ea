"""A growing catalogue: add 10% new products to a trained model instead of retraining.

    python -m experiments.bench.grow --out runs/grow

The synthetic catalogue of ``mach_jax.data.synthetic`` (``--classes`` products, power-law
popularity, ``--train`` training queries) is split by product: every tenth product (by a
seeded permutation) is *new*, the rest *old*; the old products get ids 0..K_old-1 and the
new ones K_old..K-1, so widening K keeps every old id's buckets (``HashSpec.widened``).
The training queries are split in two halves in their generated order:

1. **old model**: trained from scratch on the first half's queries that name only old
   products, over K_old classes (``--epochs`` epochs);
2. **widened, no training**: the old model folder with K grown to all products
   (``bundle.widen``): new products rank by their buckets alone;
3. **fine-tuned**: started from the old model's parameters (``train.init_from``) over all
   K classes, trained ``--finetune_epochs`` epoch(s) on the second half (a fresh log that
   names new products too; ``--new_repeat`` repeats its queries for new products and
   ``--other_fraction`` keeps a seeded fraction of the others);
4. **from scratch**: the same model trained on both halves over all K classes, ``--epochs``
   epochs.

Each model is scored on the test queries, split into those naming a new product (scored on
their new products only: a hit on an old product they also name does not count) and the
rest (P@1, R@10, exact decoding, log-mean merge). The goal of issue 16: the fine-tuned model
reaches >= 90% of the from-scratch P@1 and R@10 on both groups in <= 20% of its training
time (``train_seconds`` of results.json, steps only). Writes OUT/grow.json (with a
suffix naming the fine-tuning log's options when they are not the defaults) and prints a
table; finished runs in OUT are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import scipy.sparse as sp


def _split(args):
  from mach_jax.data.synthetic import make_catalogue
  train, test = make_catalogue(num_train=args.train, num_test=args.test,
                               num_classes=args.classes, num_features=args.features,
                               seed=args.seed)
  K = args.classes
  order = np.random.default_rng([args.seed, 1]).permutation(K)
  new = np.zeros(K, bool)
  new[order[: K // 10]] = True
  # Old products first (ids 0..K_old-1), then the new ones, each in their original order.
  relabel = np.concatenate([np.flatnonzero(~new), np.flatnonzero(new)])
  Y_train, Y_test = train.Y[:, relabel].tocsr(), test.Y[:, relabel].tocsr()
  K_old = int((~new).sum())
  names_new = lambda Y: np.asarray(Y[:, K_old:].sum(axis=1)).ravel() > 0
  return train.X, Y_train, test.X, Y_test, K_old, names_new


def _config(args, train_path, test_path, epochs, init_from=""):
  from experiments.configs.synthetic import get_config
  c = get_config()
  c.data.name = "xc"
  c.data.train, c.data.test = train_path, test_path
  c.model.update(R=args.R, B=args.B)
  c.train.update(num_epochs=epochs, progress_bar=False, init_from=init_from)
  c.eval.update(estimator="log_mean", estimators=("log_mean",), every_epochs=0, decode="exact")
  c.checkpoint.every_steps = 0
  return c


def _score(model_dir, X, groups):
  """P@1 and R@10 of each group of test points: {name: (rows, relevant labels [n, K])}."""
  from mach_jax import metrics
  from mach_jax.predictor import Predictor
  _, top = Predictor.load(model_dir).predict_topk(X, k=10)
  out = {}
  for name, (rows, Y) in groups.items():
    m = metrics.evaluate(top[rows], Y[rows], ks=(1, 10))
    out[name] = {"P@1": m["P@1"], "R@10": m["R@10"], "points": int(rows.sum())}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--classes", type=int, default=50_000)
  parser.add_argument("--features", type=int, default=8192)
  parser.add_argument("--train", type=int, default=300_000)
  parser.add_argument("--test", type=int, default=10_000)
  parser.add_argument("--R", type=int, default=4)
  parser.add_argument("--B", type=int, default=2048)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--finetune_epochs", type=int, default=1)
  parser.add_argument("--new_repeat", type=int, default=1,
                      help="fine-tuning log: each query naming a new product this many times")
  parser.add_argument("--other_fraction", type=float, default=1.0,
                      help="fine-tuning log: this seeded fraction of the other queries")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  from mach_jax import bundle, train
  from mach_jax.data.xc import write_xc

  os.makedirs(args.out, exist_ok=True)
  X, Y, X_test, Y_test, K_old, names_new = _split(args)
  half = X.shape[0] // 2
  first_old = np.flatnonzero(~names_new(Y[:half]))
  # The fine-tuning log: the second half, its queries for new products repeated, a seeded
  # fraction of the others kept (in their order).
  second = np.arange(half, X.shape[0])
  is_new = names_new(Y[second])
  keep = np.random.default_rng([args.seed, 2]).random(second.size) < args.other_fraction
  fresh = np.sort(np.concatenate([np.repeat(second[is_new], args.new_repeat),
                                  second[~is_new & keep]]), kind="stable")
  log_tag = ("" if (args.new_repeat, args.other_fraction) == (1, 1.0)
             else f"_new{args.new_repeat}x_other{args.other_fraction:g}")  # The log's shape.
  tag = log_tag + (f"_{args.finetune_epochs}ep" if args.finetune_epochs != 1 else "")
  files = {
      "old": (X[first_old], Y[first_old][:, :K_old]),
      "fresh": (X[fresh], Y[fresh]),
      "all": (X, Y),
      "test_old": (X_test, Y_test[:, :K_old]),
      "test": (X_test, Y_test),
  }
  paths = {}
  for name, (Xp, Yp) in files.items():
    paths[name] = os.path.join(args.out, f"{name}{log_tag if name == 'fresh' else ''}.txt")
    write_xc(paths[name], sp.csr_matrix(Xp), sp.csr_matrix(Yp))
  new_rows = names_new(Y_test)
  # A query for a new product is scored on its new products only (a hit on an old product
  # it also names does not count); the other queries on all their products.
  only_new = sp.diags((np.arange(Y.shape[1]) >= K_old).astype(np.float32))
  groups = {"new": (new_rows, (Y_test @ only_new).tocsr()), "old": (~new_rows, Y_test)}

  def run(name, train_name, test_name, epochs, init_from=""):
    workdir = os.path.join(args.out, name)
    results_path = os.path.join(workdir, "results.json")
    if not os.path.exists(results_path):
      train.train_and_evaluate(_config(args, paths[train_name], paths[test_name], epochs,
                                       init_from), workdir)
    with open(results_path) as f:
      return json.load(f), os.path.join(workdir, "model")

  rows = {}
  old, old_model = run("old_model", "old", "test_old", args.epochs)
  widened = os.path.join(args.out, "widened")
  if not os.path.exists(widened):
    bundle.widen(old_model, widened, Y.shape[1])
  rows["widened, no training"] = {"train_seconds": 0.0,
                                  **_score(widened, X_test, groups)}
  tuned, tuned_model = run("finetuned" + tag, "fresh", "test", args.finetune_epochs,
                           init_from=old_model)
  rows["fine-tuned from the old model"] = {"train_seconds": tuned["train_seconds"],
                                           **_score(tuned_model, X_test, groups)}
  scratch, scratch_model = run("scratch", "all", "test", args.epochs)
  rows["from scratch, all products"] = {"train_seconds": scratch["train_seconds"],
                                        **_score(scratch_model, X_test, groups)}

  ref = rows["from scratch, all products"]
  ft = rows["fine-tuned from the old model"]
  goal = {f"{g} {m}": ft[g][m] / max(ref[g][m], 1e-12) for g in ("new", "old")
          for m in ("P@1", "R@10")}
  goal["time"] = ft["train_seconds"] / ref["train_seconds"]
  goal["met"] = bool(min(v for k, v in goal.items() if k != "time") >= 0.9
                     and goal["time"] <= 0.2)
  out = {"args": vars(args), "K_old": K_old, "K": int(Y.shape[1]),
         "old_model_train_seconds": old["train_seconds"], "rows": rows, "goal": goal,
         "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%F")}
  with open(os.path.join(args.out, f"grow{tag}.json"), "w") as f:
    json.dump(out, f, indent=2)
  print(f"K_old = {K_old:,} -> K = {Y.shape[1]:,}; test points naming a new product: "
        f"{int(new_rows.sum()):,} of {len(new_rows):,}")
  print(f"{'model':32} {'train s':>8}  {'new P@1':>7} {'new R@10':>8}  {'old P@1':>7} "
        f"{'old R@10':>8}")
  for name, r in rows.items():
    print(f"{name:32} {r['train_seconds']:8.1f}  {r['new']['P@1']:7.3f} {r['new']['R@10']:8.3f}"
          f"  {r['old']['P@1']:7.3f} {r['old']['R@10']:8.3f}")
  print("fine-tuned / from scratch: " + ", ".join(f"{k} {v:.2f}" for k, v in goal.items()
                                                  if k != "met")
        + f"; goal (>= 0.9 each, time <= 0.2) {'met' if goal['met'] else 'NOT met'}")


if __name__ == "__main__":
  main()
