"""WordNet 3.0 taxonomy set: classify a synset's text into all of its hypernym ancestors.

    apt-get install wordnet-base          # Debian's WordNet 3.0 files, /usr/share/wordnet
    python -m experiments.datasets.wordnet --out runs/data/wordnet

One point per noun or verb synset (WordNet 3.0: 82,115 nouns + 13,767 verbs = 95,882). Its
text is its lemmas (underscores read as spaces) followed by its gloss; its labels are all of
its hypernym ancestors, following hypernym (``@``) and instance-hypernym (``@i``) pointers
transitively -- the shape of the ODP directory task of the MACH paper (a document labelled
with every category on its path to the root). Root synsets ("entity", and the 559 verbs
without a hypernym) have no label and are kept, as the XC format allows.

Split: a synset goes to test when crc32("<pos><offset>") % 5 == 0 (about 20%), so the split
depends only on the synset, never on file order or a random state. The label space is the
set of ancestors seen in train, ordered by (pos, offset); labels that occur only in test are
dropped from test and counted in ``stats.json``. Features: tf-idf over word unigrams and
bigrams (scikit-learn's ``TfidfVectorizer``, sublinear tf, L2-normalised rows), fitted on
train only; n-grams seen in fewer than ``--min_df`` training synsets are left out.

Writes OUT/train.txt.gz and OUT/test.txt.gz (XC repository format), OUT/labels.tsv (label id,
synset key, its lemmas) and OUT/stats.json (the counts quoted in docs/results.md), and the
same task as text for the text path: OUT/train.tsv and OUT/test.tsv, one
``text<TAB>label ids`` line per synset in the same order, split and label space (labels.tsv
serves as the catalogue)::

    python -m experiments.train --config experiments/configs/text.py --workdir runs/wn_text \
        --config.data.train=runs/data/wordnet/train.tsv \
        --config.data.test=runs/data/wordnet/test.tsv \
        --config.data.catalogue=runs/data/wordnet/labels.tsv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import zlib

import numpy as np
import scipy.sparse as sp

from mach_jax.data.xc import write_xc

WORDNET_DIR = "/usr/share/wordnet"
HYPERNYM_POINTERS = ("@", "@i")  # Hypernym and instance hypernym.
POS_FILES = (("n", "data.noun"), ("v", "data.verb"))


class WordNetFormatError(ValueError):
  """A malformed line in a WordNet data file; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Synset:
  key: str  # "<pos><offset>", e.g. "n00001740": unique across the noun and verb files.
  lemmas: tuple[str, ...]
  gloss: str
  hypernyms: tuple[str, ...]  # Keys of the direct (instance) hypernyms.

  @property
  def text(self) -> str:
    return " ".join(l.replace("_", " ") for l in self.lemmas) + " " + self.gloss


def parse_data_file(path: str, pos: str) -> list[Synset]:
  """Synsets of one WordNet ``data.<pos>`` file (format: WordNet's wndb(5WN) manual page).

  A line is ``offset lex_filenum ss_type w_cnt (word lex_id)*w_cnt p_cnt
  (symbol offset pos source/target)*p_cnt [frames] | gloss``; w_cnt is hexadecimal, p_cnt
  decimal. Lines starting with two spaces are the licence header.

  Raises:
    WordNetFormatError: naming ``path`` and the 1-based line for any malformed line.
  """
  synsets = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if line.startswith("  "):
        continue
      head, bar, gloss = line.partition(" | ")
      tokens = head.split()
      try:
        if not bar or len(tokens) < 6:
          raise ValueError("expected 'offset lex_filenum ss_type w_cnt words p_cnt ... | gloss'")
        offset, ss_type = tokens[0], tokens[2]
        if not offset.isdigit() or ss_type != pos:
          raise ValueError(f"expected a numeric offset and ss_type {pos!r}, got "
                           f"{offset!r} and {ss_type!r}")
        w_cnt = int(tokens[3], 16)
        lemmas = tuple(tokens[4:4 + 2 * w_cnt:2])
        p_at = 4 + 2 * w_cnt
        p_cnt = int(tokens[p_at])
        pointers = tokens[p_at + 1:p_at + 1 + 4 * p_cnt]
        if len(lemmas) != w_cnt or len(pointers) != 4 * p_cnt:
          raise ValueError(f"line ends inside its {w_cnt} words or {p_cnt} pointers")
      except (ValueError, IndexError) as e:
        raise WordNetFormatError(f"{path}:{lineno}: {e}") from None
      hypernyms = tuple(pointers[i + 2] + pointers[i + 1] for i in range(0, len(pointers), 4)
                        if pointers[i] in HYPERNYM_POINTERS)
      synsets.append(Synset(key=pos + offset, lemmas=lemmas, gloss=gloss.strip(),
                            hypernyms=hypernyms))
  return synsets


def read_wordnet(wordnet_dir: str = WORDNET_DIR) -> list[Synset]:
  """All noun and verb synsets, nouns first, each file in its own order."""
  synsets = []
  for pos, name in POS_FILES:
    path = os.path.join(wordnet_dir, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: not found; install Debian's wordnet-base "
                              "(apt-get install wordnet-base) or pass --wordnet_dir")
    synsets.extend(parse_data_file(path, pos))
  return synsets


def ancestors(synsets: list[Synset]) -> dict[str, frozenset[str]]:
  """Every synset's hypernym ancestors, transitively (a synset is not its own ancestor).

  Raises:
    ValueError: for a pointer to a synset that is not in the files, or a hypernym cycle.
  """
  parents = {s.key: s.hypernyms for s in synsets}
  memo: dict[str, frozenset[str]] = {}
  for start in parents:
    # Iterative post-order walk: the hypernym graph is a DAG up to ~20 levels deep.
    stack, on_path = [start], set()
    while stack:
      key = stack[-1]
      if key in memo:
        stack.pop()
        continue
      on_path.add(key)
      todo = []
      for p in parents[key]:
        if p not in parents:
          raise ValueError(f"synset {key} points to hypernym {p}, which is not in the files")
        if p in on_path and p not in memo:
          raise ValueError(f"hypernym cycle through {key} and {p}")
        if p not in memo:
          todo.append(p)
      if todo:
        stack.extend(todo)
        continue
      stack.pop()
      on_path.discard(key)
      memo[key] = frozenset().union(*([{p} | memo[p] for p in parents[key]] or [set()]))
  return memo


def is_test(key: str) -> bool:
  """The deterministic 80/20 split: about one synset in five goes to test."""
  return zlib.crc32(key.encode()) % 5 == 0


def build(synsets: list[Synset], min_df: int = 2):
  """(X_train, Y_train, X_test, Y_test, label_keys, stats) for the given synsets."""
  from sklearn.feature_extraction.text import TfidfVectorizer

  anc = ancestors(synsets)
  train = [s for s in synsets if not is_test(s.key)]
  test = [s for s in synsets if is_test(s.key)]
  label_keys = sorted(set().union(*(anc[s.key] for s in train)))
  label_id = {k: i for i, k in enumerate(label_keys)}

  def label_matrix(points):
    rows, cols, dropped = [], [], []
    for i, s in enumerate(points):
      for k in sorted(anc[s.key]):
        if k in label_id:
          rows.append(i)
          cols.append(label_id[k])
        else:
          dropped.append(k)
    Y = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                      shape=(len(points), len(label_keys)))
    return Y, dropped

  Y_train, _ = label_matrix(train)
  Y_test, dropped = label_matrix(test)
  vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True,
                               dtype=np.float32)
  X_train = vectorizer.fit_transform([s.text for s in train])
  X_test = vectorizer.transform([s.text for s in test])
  per_point = np.diff(Y_train.indptr)
  stats = {
      "synsets": len(synsets),
      "nouns": sum(s.key[0] == "n" for s in synsets),
      "verbs": sum(s.key[0] == "v" for s in synsets),
      "train_points": len(train), "test_points": len(test),
      "labels": len(label_keys),
      "distinct_hypernym_synsets": len(set().union(*anc.values())),
      "features": X_train.shape[1], "min_df": min_df,
      "avg_labels_per_train_point": float(per_point.mean()),
      "avg_labels_per_test_point": float(np.diff(Y_test.indptr).mean()),
      "train_points_without_labels": int((per_point == 0).sum()),
      "test_points_without_labels": int((np.diff(Y_test.indptr) == 0).sum()),
      "avg_nonzeros_per_train_point": float(np.diff(X_train.indptr).mean()),
      "test_points_without_features": int((np.diff(X_test.indptr) == 0).sum()),
      "test_only_labels_dropped": len(set(dropped)),
      "test_label_occurrences_dropped": len(dropped),
  }
  return X_train, Y_train, X_test, Y_test, label_keys, stats


def write_query_log(path: str, texts: list[str], Y: sp.csr_matrix) -> None:
  """``text<TAB>id1,id2,...`` per point (tabs and newlines in the text become spaces)."""
  with open(path, "w", encoding="utf-8") as f:
    for i, text in enumerate(texts):
      ids = Y.indices[Y.indptr[i]:Y.indptr[i + 1]]
      clean = " ".join(text.split())
      f.write(f"{clean}\t{','.join(map(str, sorted(ids.tolist())))}\n")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--wordnet_dir", default=WORDNET_DIR)
  p.add_argument("--min_df", type=int, default=2,
                 help="drop n-grams seen in fewer training synsets than this")
  args = p.parse_args(argv)
  if args.min_df < 1:
    raise SystemExit(f"--min_df must be >= 1, got {args.min_df}")
  synsets = read_wordnet(args.wordnet_dir)
  X_train, Y_train, X_test, Y_test, label_keys, stats = build(synsets, args.min_df)
  os.makedirs(args.out, exist_ok=True)
  write_xc(os.path.join(args.out, "train.txt.gz"), X_train, Y_train)
  write_xc(os.path.join(args.out, "test.txt.gz"), X_test, Y_test)
  for name, Y, in_test in (("train.tsv", Y_train, False), ("test.tsv", Y_test, True)):
    write_query_log(os.path.join(args.out, name),
                    [s.text for s in synsets if is_test(s.key) == in_test], Y)
  lemmas = {s.key: s.lemmas for s in synsets}
  with open(os.path.join(args.out, "labels.tsv"), "w", encoding="utf-8") as f:
    for i, k in enumerate(label_keys):
      f.write(f"{i}\t{k}\t{','.join(lemmas[k])}\n")
  with open(os.path.join(args.out, "stats.json"), "w") as f:
    json.dump(stats, f, indent=1)
  print(json.dumps(stats, indent=1))


if __name__ == "__main__":
  main()
