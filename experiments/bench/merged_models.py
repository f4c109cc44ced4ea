"""Two or more text models' repetitions merged, on the validation slice none of them saw.

    python -m experiments.bench.merged_models --train runs/data/wordnet/train.tsv \
        --model runs/peers_wn_refit/wordnet/mach_text/run/select/model \
        --model "runs/peers_wn_refit_seed1/wordnet/mach_text@seed1/run/select/model"

Models of the same config at different seeds (their own hash functions and initial
weights) merged by averaging their ``log_mean`` scores are MACH with the repetitions of
all of them, trained apart. Give selection runs' kept models (``DIR/select/model`` of a
run with ``train.refit``): they never trained on the validation slice, which does not
move with the seed (``mach_jax.data.validation``). Prints P@1 / P@3 / P@5 of each model
alone and of the merge on the slice of ``--train`` the config carves
(``data.validation_fraction``, ``data.validation_seed`` of ``--config``, ``text`` by
default). The models must share K.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--train", required=True, help="the training log (query<TAB>ids)")
  parser.add_argument("--model", action="append", required=True, help="a model folder")
  parser.add_argument("--config", default="text",
                      help="experiments/configs/<NAME>.py, whose validation slice is scored")
  args = parser.parse_args()
  if len(args.model) < 2:
    raise SystemExit("--model: give two or more model folders to merge")
  from mach_jax import metrics  # Heavy imports after the flags.
  from mach_jax.data.query_log import label_matrix, read_lines
  from mach_jax.data.validation import held_out
  from mach_jax.search import Searcher
  c = __import__(f"experiments.configs.{args.config}", fromlist=["get_config"]).get_config()
  K = Searcher.load(args.model[0]).predictor.spec.K
  texts, labels = [], []
  for queries, ids, _ in read_lines(args.train, K, 1 << 16):
    texts += queries
    labels += ids
  held = np.flatnonzero(held_out(np.arange(len(texts)), c.data.validation_fraction,
                                 c.data.validation_seed))
  texts, Y = [texts[i] for i in held], label_matrix([labels[i] for i in held], K)
  scores = []
  for path in args.model:
    searcher = Searcher.load(path)
    if searcher.predictor.spec.K != K:
      raise SystemExit(f"{path}: K = {searcher.predictor.spec.K}, {args.model[0]}: K = {K}")
    score, ids = searcher.predictor.predict_topk(searcher.featurizer.transform(texts), k=K,
                                                 estimator="log_mean")
    full = np.full((len(texts), K), -np.inf, np.float32)
    np.put_along_axis(full, np.asarray(ids), np.asarray(score), axis=1)
    scores.append(full)
  print(f"{len(texts):,} validation points of {args.train}")
  for name, s in [*zip(args.model, scores), ("merged", sum(scores) / len(scores))]:
    r = metrics.evaluate(np.argsort(-s, axis=1, kind="stable")[:, :5], Y)
    print(f"{name}: P@1 {r['P@1']:.4f}  P@3 {r['P@3']:.4f}  P@5 {r['P@5']:.4f}")


if __name__ == "__main__":
  main()
