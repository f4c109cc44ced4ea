"""Where text WordNet's P@1 is won and lost: each system's P@1 by part of speech and by
the text's length, from the predictions a peers run kept.

    python -m experiments.bench.by_part_of_speech --run runs/peers_wn_refit/wordnet \
        --data runs/data/wordnet

``--run`` is a set's folder of an ``experiments.bench.peers`` run (one ``SYSTEM/preds.npy``
of test top-5 ids per system); ``--data`` the text WordNet folder (``test.tsv``,
``labels.tsv``: id, synset offset with its part of speech, lemmas). A test text is a
verb's when one of its labels is a verb synset. Prints one table; the test split was read
by the run already and nothing here chooses anything.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run", required=True)
  parser.add_argument("--data", required=True)
  parser.add_argument("--against", default="pecos", help="the system the disagreements are "
                      "counted against (default pecos)")
  args = parser.parse_args()
  texts, labels = [], []
  for line in open(os.path.join(args.data, "test.tsv"), encoding="utf-8"):
    text, ids = line.rstrip("\n").split("\t")
    texts.append(text)
    labels.append({int(i) for i in ids.split(",")} if ids else set())
  pos = [row.split("\t")[1][0] for row in open(os.path.join(args.data, "labels.tsv"),
                                               encoding="utf-8")]
  verb = np.array([any(pos[j] == "v" for j in y) for y in labels])
  words = np.array([len(t.split()) for t in texts])
  systems = sorted(d for d in os.listdir(args.run)
                   if os.path.exists(os.path.join(args.run, d, "preds.npy")))
  hit, noun_first = {}, {}
  for s in systems:
    top1 = np.load(os.path.join(args.run, s, "preds.npy"), allow_pickle=False)[:, 0]
    noun_first[s] = np.array([pos[t] == "n" for t in top1])
    if len(top1) != len(labels):
      raise SystemExit(f"{args.run}/{s}/preds.npy: {len(top1)} rows, the test split has "
                       f"{len(labels)}")
    hit[s] = np.array([t in y for t, y in zip(top1, labels)])
  groups = [("all", np.ones_like(verb)), ("nouns", ~verb), ("verbs", verb)] + [
      (f"{lo}-{hi - 1} words", (words >= lo) & (words < hi))
      for lo, hi in ((0, 5), (5, 10), (10, 20))] + [("20+ words", words >= 20)]
  print("| texts | n | " + " | ".join(systems) + " |")
  print("|---|---|" + "---|" * len(systems))
  for name, sel in groups:
    print(f"| {name} | {int(sel.sum()):,} | "
          + " | ".join(f"{hit[s][sel].mean():.4f}" for s in systems) + " |")
  for s in systems:
    if s != args.against and args.against in hit:
      lost = hit[args.against] & ~hit[s]
      print(f"{s}: {int(lost.sum())} texts {args.against} gets right and it does not "
            f"({int((lost & verb).sum())} verbs', {int((lost & verb & noun_first[s]).sum())} "
            f"of them with a noun first), {int((hit[s] & ~hit[args.against]).sum())} the "
            "other way")


if __name__ == "__main__":
  main()
