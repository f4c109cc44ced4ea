"""Debian package search set: find the package from its one-line synopsis (text to item).

    apt-get update -o Acquire::Languages=en       # fetches the apt lists read here
    python -m experiments.datasets.debian --out runs/data/debian [--no_xc]

A real, freely usable text-to-item development set built from Debian's package archive:
the Packages and Translation-en lists of one suite's ``main`` component for amd64 (default
Debian 12 "bookworm"), as apt keeps them under /var/lib/apt/lists. Only the suite's own
files are read, never ``<suite>-updates`` or ``<suite>-security``; compressed lists (.lz4,
.xz, .gz, ...) are read through ``/usr/lib/apt/apt-helper cat-file``, plain ones directly.

Items: every binary package name in Packages (about 63K). A name listed with several
versions (linux-doc, linux-source, ...) keeps its highest version by dpkg's ordering
(``dpkg --compare-versions``, reimplemented in ``compare_versions``). Item id = index of the
name in the sorted list of names (Python's code-point order).

Training points (``text<TAB>id``), per item: each paragraph of its long description (from
Translation-en, matched by Package and Description-md5; paragraphs are separated by " ."
lines, continuation lines joined, whitespace collapsed), then one point made of its name,
section and debtags split into words: lower-case runs of letters and runs of digits, so
"python3-numpy" + "python" + "role::shared-lib" reads "python 3 numpy python role shared
lib" (``name_words``). Items without a long description get the name point only. A training
point whose text equals any item's synopsis (ignoring case, after whitespace collapsing) is
dropped and counted (``stats["dropped_training_points"]``): no test query is trained on.
A text longer than 10,000 characters (8 in bookworm: lists of fonts or plugins) is cut at a
space below that, the query-log reader's limit (``MAX_CHARS``), and counted.
Training points are written in a fixed shuffled order (sorted by crc32 of "<id>:<k>", k the
point's index within its item): sorted by name, related packages (python3-*, lib*) would sit
together, and the query-log reader shuffles only within a bounded window.

Test queries: each distinct synopsis (whitespace collapsed), one line each, labelled with
EVERY item that has that exact synopsis (case-sensitive), ids ascending; lines ordered by
their first id. There is no validation split: the trainer carves one from the training data.

Writes to OUT:
  items.tsv        ``id<TAB>package<TAB>version<TAB>synopsis``, K lines (the catalogue; the
                   version kept is here, so there is no separate packages.tsv)
  train.tsv        ``text<TAB>id``     (the format mach_jax.data.query_log reads)
  test.tsv         ``synopsis<TAB>id1,id2,...``
  train.txt.gz     XC format (mach_jax.data.xc): tf-idf features fitted on the training text
  test.txt.gz      only, word 1-2-grams and character 3-5-grams within word boundaries,
                   each block L2-normalised, then hstack'ed and L2-normalised again; of
                   the n-grams in >= ``--min_df`` (2) training points the ``--max_features``
                   (2**18) most frequent of each kind are kept (bookworm: about 5 min on
                   2 cores, 324 MB; skip both files with ``--no_xc``)
  stats.json       counts, the input files with their sha256 (no timings: the same archive
                   state gives byte-identical files). ``vocabulary_size``: distinct
                   lower-cased words of 2+ word characters in the training text (the word
                   vectorizer's tokens), before ``--min_df`` and ``--max_features``.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from experiments.datasets import text_set
from experiments.datasets.text_set import MAX_CHARS, TextSet, normalise, shuffle_key, truncate

LISTS_DIR = "/var/lib/apt/lists"
SUITE = "bookworm"
APT_HELPER = "/usr/lib/apt/apt-helper"
FETCH_COMMAND = "apt-get update -o Acquire::Languages=en"
# apt's list names: <mirror path with '/' as '_'>_dists_<suite>_main_<kind>[.<compression>].
PACKAGES_LIST = "dists_{suite}_main_binary-amd64_Packages"
TRANSLATION_LIST = "dists_{suite}_main_i18n_Translation-en"
COMPRESSED = (".lz4", ".xz", ".gz", ".bz2", ".lzma", ".zst")
WORD = re.compile(r"[a-z]+|[0-9]+")


class ControlFormatError(ValueError):
  """A malformed stanza in an apt list; the message names the file and the 1-based line (of
  the decompressed text when the list is compressed)."""


@dataclasses.dataclass(frozen=True)
class Package:
  name: str
  version: str
  section: str
  tags: tuple[str, ...]  # Debtags, e.g. ("role::program", "use::gameplaying").
  synopsis: str  # First line of Description, whitespace collapsed.
  md5: str  # Description-md5: with name, the key into Translation-en.


def name_words(*texts: str) -> list[str]:
  """Lower-case runs of letters and runs of digits: "python3-numpy" -> python, 3, numpy;
  "role::shared-lib" -> role, shared, lib; "g++-12" -> g, 12."""
  return [w for t in texts for w in WORD.findall(t.lower())]


# --- Reading apt lists ---------------------------------------------------------------------


def find_list(lists_dir: str, suite: str, kind: str) -> str:
  """The one file in ``lists_dir`` for ``kind`` (PACKAGES_LIST or TRANSLATION_LIST).

  Raises:
    FileNotFoundError: naming the expected file and the apt-get command that fetches it
      (or pass --lists_dir / --suite for lists kept elsewhere).
    ValueError: when several mirrors hold the list (remove all but one, or copy one
      mirror's files into a folder of their own and pass it as --lists_dir).
  """
  base = kind.format(suite=suite)
  found = sorted(p for p in glob.glob(os.path.join(glob.escape(lists_dir), "*_" + base + "*"))
                 if p.endswith(base) or any(p.endswith(base + c) for c in COMPRESSED))
  if not found:
    expect = os.path.join(lists_dir, f"deb.debian.org_debian_{base}[{'|'.join(COMPRESSED)}]")
    raise FileNotFoundError(
        f"{expect}: not found. Fetch it with `{FETCH_COMMAND}` (as root, with 'deb "
        f"http://deb.debian.org/debian {suite} main' in /etc/apt/sources.list or "
        "sources.list.d), or pass --lists_dir / --suite")
  mirrors = {p.rsplit("_" + base, 1)[0] for p in found}
  if len(mirrors) > 1:
    raise ValueError(f"{lists_dir}: {base} comes from several mirrors ({found}); keep one "
                     "mirror's files in a folder of their own and pass it as --lists_dir")
  return found[0]  # One mirror: a plain and a compressed copy hold the same list.


def read_text(path: str) -> str:
  """The file's text, decompressed by apt-helper when compressed (any of COMPRESSED)."""
  if not path.endswith(COMPRESSED):
    with open(path, encoding="utf-8") as f:
      return f.read()
  if not os.path.exists(APT_HELPER):
    raise FileNotFoundError(f"{APT_HELPER}: not found (it ships with apt); it is needed to "
                            f"decompress {path}. Decompress it by hand and pass that folder "
                            "as --lists_dir")
  done = subprocess.run([APT_HELPER, "cat-file", path], capture_output=True)
  if done.returncode != 0:
    raise RuntimeError(f"{APT_HELPER} cat-file {path} failed ({done.returncode}): "
                       f"{done.stderr.decode(errors='replace').strip()[:400]}")
  return done.stdout.decode("utf-8")


def stanzas(path: str, text: str):
  """(line number of its first line, {field: value}) per stanza of a control file.

  Debian's control-file format (deb822): stanzas separated by blank lines; ``Field: value``
  lines; continuation lines start with a space or a tab and are kept, newline-joined, with
  their leading whitespace (so " ." paragraph marks survive).

  Raises:
    ControlFormatError: naming ``path`` and the line for a line that is neither a field nor
      a continuation, a continuation with no field before it, or a field twice in a stanza.
  """
  fields: dict[str, str] = {}
  first, last = 0, None
  for lineno, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      if fields:
        yield first, fields
      fields, last = {}, None
      continue
    if line[0] in " \t":
      if last is None:
        raise ControlFormatError(f"{path}:{lineno}: continuation line with no field before "
                                 f"it: {line[:80]!r}")
      fields[last] += "\n" + line
      continue
    name, colon, value = line.partition(":")
    if not colon or not name or " " in name or name.startswith(("#", "-")):
      raise ControlFormatError(f"{path}:{lineno}: expected 'Field: value' or a continuation "
                               f"line starting with a space, got {line[:80]!r}")
    if name in fields:
      raise ControlFormatError(f"{path}:{lineno}: field {name!r} twice in one stanza")
    if not fields:
      first = lineno
    fields[name], last = value.strip(), name
  if fields:
    yield first, fields


def _require(path: str, lineno: int, fields: dict[str, str], names: tuple[str, ...]):
  missing = [n for n in names if not fields.get(n, "").strip()]
  if missing:
    raise ControlFormatError(f"{path}:{lineno}: stanza {fields.get('Package', '?')!r} has no "
                             f"{', '.join(missing)} field")


def read_packages(path: str, text: str | None = None) -> tuple[list[Package], int]:
  """(packages sorted by name, one per name at its highest version; count of stanzas
  dropped as lower versions of a name listed twice).

  Raises:
    ControlFormatError: naming ``path`` and the stanza's first line for a stanza without
      Package, Version, Description or Description-md5 or with an empty synopsis, or
      naming ``path`` alone when it holds no stanza (fix or re-fetch the list).
  """
  text = read_text(path) if text is None else text
  best: dict[str, Package] = {}
  duplicates = 0
  for lineno, f in stanzas(path, text):
    _require(path, lineno, f, ("Package", "Version", "Description", "Description-md5"))
    tags = tuple(t for t in (normalise(t) for t in f.get("Tag", "").split(",")) if t)
    p = Package(name=f["Package"], version=f["Version"], section=f.get("Section", ""),
                tags=tags, synopsis=normalise(f["Description"].split("\n", 1)[0]),
                md5=f["Description-md5"])
    if not p.synopsis:
      raise ControlFormatError(f"{path}:{lineno}: stanza {p.name!r} has an empty synopsis")
    if p.name in best:
      duplicates += 1
      if compare_versions(p.version, best[p.name].version) <= 0:
        continue
    best[p.name] = p
  if not best:
    raise ControlFormatError(f"{path}: no package stanzas; re-fetch it with `{FETCH_COMMAND}`")
  return [best[n] for n in sorted(best)], duplicates


def read_translations(path: str, text: str | None = None) -> dict[tuple[str, str], str]:
  """{(Package, Description-md5): Description-en} (first line synopsis, then the long
  description's raw lines).

  Raises:
    ControlFormatError: naming ``path`` and the stanza's first line for a stanza without
      Package, Description-md5 or Description-en.
  """
  text = read_text(path) if text is None else text
  out = {}
  for lineno, f in stanzas(path, text):
    _require(path, lineno, f, ("Package", "Description-md5", "Description-en"))
    out[f["Package"], f["Description-md5"]] = f["Description-en"]
  return out


def paragraphs(description: str) -> list[str]:
  """The long description's paragraphs (after the synopsis line), whitespace collapsed.

  A line that is exactly " ." separates paragraphs; every other line (verbatim lines with
  two leading spaces and the rare " .word" lines included) is text.
  """
  out, cur = [], []
  for line in description.split("\n")[1:] + ["."]:
    if line.strip() == ".":
      if normalise(" ".join(cur)):
        out.append(normalise(" ".join(cur)))
      cur = []
    else:
      cur.append(line)
  return out


def compare_versions(a: str, b: str) -> int:
  """< 0, 0 or > 0 as Debian version ``a`` is lower than, equal to or higher than ``b``
  (dpkg's rules: epoch numerically, then upstream version and revision by verrevcmp, where
  '~' sorts before everything, even the end of the string, and letters before symbols)."""

  def split(v):
    epoch, colon, rest = v.partition(":")
    if not colon:
      epoch, rest = "0", v
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
      upstream, revision = rest, ""
    return int(epoch or 0), upstream, revision

  def isdigit(c):
    return "0" <= c <= "9"

  def order(c):
    if isdigit(c):
      return 0
    if "a" <= c.lower() <= "z":
      return ord(c)
    return -1 if c == "~" else ord(c) + 256

  def verrevcmp(x, y):
    i = j = 0
    while i < len(x) or j < len(y):
      while (i < len(x) and not isdigit(x[i])) or (j < len(y) and not isdigit(y[j])):
        xc = order(x[i]) if i < len(x) else 0
        yc = order(y[j]) if j < len(y) else 0
        if xc != yc:
          return xc - yc
        i, j = i + 1, j + 1
      i0, j0 = i, j
      while i < len(x) and isdigit(x[i]):
        i += 1
      while j < len(y) and isdigit(y[j]):
        j += 1
      xn, yn = int(x[i0:i] or 0), int(y[j0:j] or 0)
      if xn != yn:
        return -1 if xn < yn else 1
    return 0

  ea, ua, ra = split(a)
  eb, ub, rb = split(b)
  if ea != eb:
    return -1 if ea < eb else 1
  return verrevcmp(ua, ub) or verrevcmp(ra, rb)


# --- Building the set ----------------------------------------------------------------------


def build_set(packages: list[Package], translations: dict[tuple[str, str], str]) -> TextSet:
  """Training points, grouped test queries and counts from parsed lists (see module doc)."""
  synopses = {p.synopsis.casefold() for p in packages}
  keyed, dropped, dropped_name_points = [], 0, 0
  no_translation = no_long = paragraph_points = truncated = 0
  for i, p in enumerate(packages):
    description = translations.get((p.name, p.md5))
    no_translation += description is None
    paras = paragraphs(description) if description is not None else []
    no_long += not paras
    texts = paras + [" ".join(name_words(p.name, p.section, *p.tags))]
    truncated += sum(len(t) > MAX_CHARS for t in texts)
    texts = [truncate(t) for t in texts]
    for k, text in enumerate(texts):
      if text.casefold() in synopses:
        dropped += 1
        dropped_name_points += k == len(paras)
        continue
      paragraph_points += k < len(paras)
      keyed.append((shuffle_key(i, k), text, i))
  keyed.sort()
  train = [(text, i) for _, text, i in keyed]
  groups: dict[str, list[int]] = {}
  for i, p in enumerate(packages):
    groups.setdefault(p.synopsis, []).append(i)  # Ids ascending; dict keeps first-id order.
  test = list(groups.items())
  sizes = np.array([len(ids) for _, ids in test])
  largest = max(test, key=lambda t: (len(t[1]), -t[1][0]))
  per_item = np.bincount([i for _, i in train], minlength=len(packages))
  stats = {
      "items": len(packages),
      "training_points": len(train),
      "training_paragraph_points": paragraph_points,
      "training_name_points": len(train) - paragraph_points,
      "dropped_training_points": dropped,
      "dropped_name_points": dropped_name_points,
      "truncated_training_points": truncated,
      "items_without_training_points": int((per_item == 0).sum()),
      "items_without_translation": no_translation,
      "items_without_long_description": no_long,
      "items_with_tags": sum(bool(p.tags) for p in packages),
      "test_queries": len(test),
      "label_groups": len(test),  # Each item has one synopsis: the groups partition K.
      "shared_synopses": int((sizes > 1).sum()),
      "items_with_shared_synopsis": int(sizes[sizes > 1].sum()),
      "largest_group": len(largest[1]),
      "largest_group_synopsis": largest[0],
      "mean_labels_per_test_query": float(sizes.mean()),
      "vocabulary_size": text_set.vocabulary_size(train),
      "mean_training_points_per_item": float(per_item.mean()),
      "mean_words_per_test_query": float(np.mean([len(s.split()) for s, _ in test])),
      "mean_words_per_training_point": float(np.mean([len(t.split()) for t, _ in train])),
      "max_chars_per_training_point": max((len(t) for t, _ in train), default=0),
  }
  return TextSet(items=packages, train=train, test=test, stats=stats)


def build(out: str, lists_dir: str = LISTS_DIR, suite: str = SUITE, xc: bool = True,
          min_df: int = 2, max_features: int | None = 1 << 18) -> dict:
  """Read the lists, write every output file into ``out`` (see module doc); the stats."""
  packages_path = find_list(lists_dir, suite, PACKAGES_LIST)
  translation_path = find_list(lists_dir, suite, TRANSLATION_LIST)
  packages, duplicates = read_packages(packages_path)
  data = build_set(packages, read_translations(translation_path))
  stats = {"suite": suite, "component": "main", "architecture": "amd64",
           "inputs": [text_set.file_record(packages_path),
                      text_set.file_record(translation_path)],
           "package_stanzas_dropped_as_lower_versions": duplicates, **data.stats}
  items = (f"{i}\t{p.name}\t{p.version}\t{p.synopsis}" for i, p in enumerate(data.items))
  return text_set.write(out, data, items, stats, xc, min_df, max_features)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  text_set.add_build_arguments(p)
  p.add_argument("--lists_dir", default=LISTS_DIR, help="where apt keeps its lists")
  p.add_argument("--suite", default=SUITE, help="the suite whose main lists are read")
  args = p.parse_args(argv)
  text_set.check_build_arguments(args)
  start = time.perf_counter()
  stats = build(args.out, args.lists_dir, args.suite, xc=not args.no_xc, min_df=args.min_df,
                max_features=args.max_features or None)
  print(json.dumps(stats, indent=1, ensure_ascii=False))
  print(f"built {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
  main()
