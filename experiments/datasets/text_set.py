"""What every text-to-item set the repository builds writes, and how (debian, foldoc).

A set is K items, N training points ``(text, item id)`` and Q test queries ``(query, ids)``.
``write`` puts it in OUT as:
  items.tsv        one line per item, ``id<TAB>...`` (the catalogue; the caller's columns)
  train.tsv        ``text<TAB>id``     (the format mach_jax.data.query_log reads)
  test.tsv         ``query<TAB>id1,id2,...``
  train.txt.gz     XC format (mach_jax.data.xc): tf-idf features fitted on the training text
  test.txt.gz      only (``xc_matrices``), for the peers and the XC path; skipped with xc=False
  stats.json       the caller's counts and input files, plus the XC files' counts
No time stamps anywhere: the same inputs give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zlib

import numpy as np
import scipy.sparse as sp

# Longer training texts are cut at the last space before this many characters: the default
# TextFeaturizer.max_chars (mach_jax.data.text), above which the query-log reader refuses a line.
MAX_CHARS = 10_000
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default word token pattern.


@dataclasses.dataclass
class TextSet:
  """A set in memory. K items; N training points; Q test queries."""

  items: list  # [K], index = item id; what each is depends on the set.
  train: list[tuple[str, int]]  # [N] (text, item id), in the written (shuffled) order.
  test: list[tuple[str, list[int]]]  # [Q] (query, ascending ids), ordered by first id.
  stats: dict


def normalise(text: str) -> str:
  """Whitespace runs (tabs, newlines, Unicode spaces) to one space, ends stripped: the
  form every written text takes, so no field can break a TSV or query-log line."""
  return " ".join(text.split())


def truncate(text: str, max_chars: int = MAX_CHARS) -> str:
  """``text`` cut to at most ``max_chars`` characters, at the last space if there is one."""
  if len(text) <= max_chars:
    return text
  head = text[:max_chars + 1].rsplit(" ", 1)[0]
  return head if head and len(head) <= max_chars else text[:max_chars]


def shuffle_key(item: int, k: int) -> tuple[int, int, int]:
  """The written order of training points: sorted by crc32 of "<item>:<k>", k the point's
  index within its item. Items sorted by name would put related ones together, and the
  query-log reader shuffles only within a bounded window."""
  return zlib.crc32(f"{item}:{k}".encode()), item, k


def vocabulary_size(train: list[tuple[str, int]]) -> int:
  """Distinct lower-cased words of 2+ word characters in the training text (the word
  vectorizer's tokens), before ``min_df`` and ``max_features``."""
  vocabulary = set()
  for text, _ in train:
    vocabulary.update(TOKEN.findall(text.lower()))
  return len(vocabulary)


def xc_matrices(data: TextSet, min_df: int = 2, max_features: int | None = 1 << 18):
  """(X_train [N, D], Y_train [N, K], X_test [Q, D], Y_test [Q, K], stats) in CSR float32.

  Word 1-2-grams and character 3-5-grams (within word boundaries) tf-idf, sublinear tf,
  fitted on the training text only; each block keeps its ``max_features`` most frequent
  n-grams seen in at least ``min_df`` training points (None: all), is L2-normalised per
  row, and the hstack'ed rows are L2-normalised again. Lower ``max_features`` for a smaller
  D (the rarest n-grams go first, so the nonzeros and file sizes barely change); lower
  ``min_df`` or pass None to keep more.
  """
  from sklearn.feature_extraction.text import TfidfVectorizer  # Heavy import: lazy.
  from sklearn.preprocessing import normalize

  common = dict(sublinear_tf=True, min_df=min_df, max_features=max_features, dtype=np.float32)
  word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **common)
  char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)
  train_text = [t for t, _ in data.train]
  test_text = [t for t, _ in data.test]
  X_train = normalize(sp.hstack([word.fit_transform(train_text), char.fit_transform(train_text)],
                                format="csr"))
  X_test = normalize(sp.hstack([word.transform(test_text), char.transform(test_text)],
                               format="csr"))
  K = len(data.items)

  def labels(lists):
    indptr = np.concatenate([[0], np.cumsum([len(l) for l in lists])])
    cols = np.array([i for l in lists for i in l], np.int32)
    return sp.csr_matrix((np.ones(cols.size, np.float32), cols, indptr), shape=(len(lists), K))

  Y_train = labels([[i] for _, i in data.train])
  Y_test = labels([ids for _, ids in data.test])
  stats = {
      "features": X_train.shape[1],
      "word_features": len(word.vocabulary_),
      "char_features": len(char.vocabulary_),
      "min_df": min_df, "max_features": max_features,
      "mean_nonzeros_per_training_point": float(np.diff(X_train.indptr).mean()),
      "mean_nonzeros_per_test_query": float(np.diff(X_test.indptr).mean()),
      "training_points_without_features": int((np.diff(X_train.indptr) == 0).sum()),
      "test_queries_without_features": int((np.diff(X_test.indptr) == 0).sum()),
  }
  return X_train, Y_train, X_test, Y_test, stats


def file_record(path: str) -> dict:
  """An input file's name, size and sha256, for stats.json."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return {"file": os.path.basename(path), "bytes": os.path.getsize(path),
          "sha256": h.hexdigest()}


def write_lines(path: str, lines) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for line in lines:
      f.write(line + "\n")


def write(out: str, data: TextSet, item_lines, stats: dict, xc: bool = True, min_df: int = 2,
          max_features: int | None = 1 << 18) -> dict:
  """Every file of the module doc into ``out``; ``item_lines`` are items.tsv's lines.

  Returns ``stats`` with the XC files' counts under "xc" (when written)."""
  os.makedirs(out, exist_ok=True)
  write_lines(os.path.join(out, "items.tsv"), item_lines)
  write_lines(os.path.join(out, "train.tsv"), (f"{t}\t{i}" for t, i in data.train))
  write_lines(os.path.join(out, "test.tsv"),
              (f"{s}\t{','.join(map(str, ids))}" for s, ids in data.test))
  if xc:
    from mach_jax.data.xc import write_xc

    X_train, Y_train, X_test, Y_test, xc_stats = xc_matrices(data, min_df, max_features)
    for name, X, Y in (("train.txt.gz", X_train, Y_train), ("test.txt.gz", X_test, Y_test)):
      write_xc(os.path.join(out, name), X, Y)  # No time stamp: same inputs, same bytes.
    stats = {**stats, "xc": xc_stats}
  with open(os.path.join(out, "stats.json"), "w", encoding="utf-8", newline="\n") as f:
    json.dump(stats, f, indent=1, ensure_ascii=False)
    f.write("\n")
  return stats


def add_build_arguments(parser) -> None:
  """The XC files' options every builder's command line takes."""
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--no_xc", action="store_true", help="skip train.txt.gz and test.txt.gz")
  parser.add_argument("--min_df", type=int, default=2,
                      help="drop n-grams seen in fewer training points than this")
  parser.add_argument("--max_features", type=int, default=1 << 18,
                      help="keep this many most frequent n-grams of each kind, word and char "
                           "(0: all)")


def check_build_arguments(args) -> None:
  if args.min_df < 1 or args.max_features < 0:
    raise SystemExit(f"--min_df must be >= 1 and --max_features >= 0, got {args.min_df} and "
                     f"{args.max_features}")
