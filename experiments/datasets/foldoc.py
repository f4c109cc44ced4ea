"""FOLDOC term lookup: find the computing term from its one-sentence definition (text to item).

    apt-get install dict-foldoc        # /usr/share/dictd/foldoc.{index,dict.dz}
    python -m experiments.datasets.foldoc --out runs/data/foldoc [--no_xc]

A real text-to-item set in another domain than the Debian and WordNet sets the text config
was developed on: the Free On-line Dictionary of Computing (https://foldoc.org, Denis Howe,
GFDL), as Debian's ``dict-foldoc`` package ships it in the dictd format: ``foldoc.index``
(``headword<TAB>offset<TAB>length``, offset and length in dictd's base64) and
``foldoc.dict.dz`` (dictzip, read as gzip; a plain ``foldoc.dict`` is read too). Each entry
is one or more unindented header lines (the term, its spellings and abbreviations), a blank
line, then indented paragraphs: the first usually opens with the term's categories in angle
brackets (``<algorithm, programming>``), and the last is often the entry's date.

Items: every distinct entry (several headwords of the index share one) whose definition is
text, about 11K; dictd's own ``00-database-*`` entries are skipped. An entry whose whole
body is a cross-reference (``{Algol 60}``, ``See {FDDI}.``) is an alias, not an item: its
header lines join the name point of the entry it names (when that is an item; counted
otherwise). Item id = index in the items sorted by (title, offset), title = the first header
line.

Text cleaning: sense numbers ("1. ", "2. ") and categories removed from the start of each
paragraph (the categories, each once, go to the name point), date paragraphs dropped,
cross-reference braces dropped (``{brute force}`` reads "brute force"), URLs dropped,
whitespace collapsed (``parse_entry``, ``clean``).

Test queries: each item's definition sentence: the first sentence of its first paragraph,
after the categories (a sentence ends at ". ", "! " or "? " before an upper-case letter, a
digit, a quote or a bracket, or at the paragraph's end). One line per distinct sentence,
labelled with EVERY item whose definition sentence is exactly that (e.g. several entries
defined as "A programming language."), ids ascending; lines ordered by their first id.

Training points (``text<TAB>id``), per item: the rest of the first paragraph, each later
paragraph but the date line (``(1997-05-11)``) and paragraphs left empty by the cleaning,
then one name point: the header lines, the headers of its aliases and its categories. A
training point whose text equals any item's definition sentence (ignoring case) is dropped
and counted; texts longer than 10,000 characters are cut at a space (none in 2023's file).
Written in a fixed shuffled order (``text_set.shuffle_key``).

What makes it easy and hard: the definition is the densest text of an entry and is never
trained on; many entries are a single sentence, so their item is learnt from its name point
alone; a definition often names the term or its expansion ("(TTS) Automatic conversion of
text streams to voice"), which the name point carries.

Writes to OUT ``items.tsv`` (``id<TAB>title<TAB>definition sentence``), ``train.tsv``,
``test.tsv``, the XC files and ``stats.json`` (experiments/datasets/text_set.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import re
import sys
import time
import zlib

import numpy as np

from experiments.datasets import text_set
from experiments.datasets.text_set import MAX_CHARS, TextSet, normalise, shuffle_key, truncate

DICT_DIR = "/usr/share/dictd"
INSTALL_COMMAND = "apt-get install dict-foldoc"
BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # dictd's digits.
DIGIT = {c: i for i, c in enumerate(BASE64)}
SENSE = re.compile(r"^\d+\.\s+")  # "1. ", "2. ": the senses of a term with several.
CATEGORIES = re.compile(r"^<([^<>]*)>\s*")
URL = re.compile(r"\(?\b(?:https?|ftp|file|gopher|telnet|news|mailto):[^\s{}]*")
WORD = re.compile(r"\w")  # A cleaned paragraph without one (".", "?") is dropped.
DATE = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)\.?$")
ALIAS = re.compile(r"^(?:See )?\{([^{}]+)\}\.?$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[{])")


class DictFormatError(ValueError):
  """A malformed dictd index line or entry; the message names the file and the 1-based line
  of the index (or the headword of the entry)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  headers: tuple[str, ...]  # The unindented lines before the body: term, spellings.
  categories: tuple[str, ...]  # From "<a, b>" opening a paragraph, in order, each once.
  paragraphs: tuple[str, ...]  # Whitespace collapsed; sense numbers, categories and date
                               # lines removed; not yet cleaned.
  offset: int  # In the .dict file: with the headers, what tells entries apart.

  @property
  def title(self) -> str:
    return self.headers[0]


def decode_number(digits: str) -> int:
  """dictd's base64 number ("KpRV" -> 2,757,205); ValueError on any other character."""
  if not digits:
    raise ValueError("empty number")
  value = 0
  for c in digits:
    if c not in DIGIT:
      raise ValueError(f"{c!r} is not a dictd base64 digit")
    value = value * 64 + DIGIT[c]
  return value


def read_index(path: str) -> list[tuple[str, int, int, int]]:
  """[(headword, offset, length, line number)] of a dictd .index file, in file order."""
  out = []
  with open(path, "rb") as f:
    raw = f.read()
  lines = raw.split(b"\n")
  if lines[-1] == b"":
    lines.pop()  # The piece after the final newline.
  for lineno, data in enumerate(lines, 1):
    try:
      line = data.decode("utf-8")
      fields = line.split("\t")
      if len(fields) != 3 or not fields[0]:
        raise ValueError(f"expected headword<TAB>offset<TAB>length, got {len(fields)} "
                         "field(s)")
      out.append((fields[0], decode_number(fields[1]), decode_number(fields[2]), lineno))
    except ValueError as e:  # UnicodeDecodeError included.
      raise DictFormatError(f"{path}:{lineno}: {e}: {data[:120]!r}") from None
  return out


def read_dict(path: str) -> bytes:
  """The .dict file's bytes (a .dz file is dictzip, which gzip reads)."""
  if not path.endswith(".dz"):
    with open(path, "rb") as f:
      return f.read()
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise DictFormatError(f"{path}: not a readable dictzip (gzip) file: {e}") from None


def clean(text: str) -> str:
  """Cross-reference braces and URLs dropped, whitespace collapsed."""
  return normalise(URL.sub(" ", text).replace("{", "").replace("}", ""))


def parse_entry(text: str, offset: int) -> Entry:
  """An entry's text (headers, blank line, indented body) as an Entry."""
  lines = text.split("\n")
  headers = []
  while lines and lines[0].strip() and not lines[0][:1].isspace():
    headers.append(normalise(lines.pop(0)))
  raw, cur = [], []
  for line in lines + [""]:
    if line.strip():
      cur.append(line)
    elif cur:
      raw.append(" ".join(cur))
      cur = []
  categories, paragraphs = [], []
  for p in map(normalise, raw):
    p = SENSE.sub("", p, count=1)  # "1. <a> text" and "<a> 1. text" both occur.
    match = CATEGORIES.match(p)
    if match:
      categories += [c.strip() for c in match.group(1).split(",")
                     if c.strip() and c.strip() not in categories]
      p = SENSE.sub("", p[match.end():], count=1)
    if p and not DATE.match(p):
      paragraphs.append(p)
  return Entry(tuple(headers), tuple(categories), tuple(paragraphs), offset)


def read_entries(index_path: str, dict_path: str):
  """(entries in first-index-line order, {case-folded headword: entry position}, skipped
  metadata headwords). Headwords sharing one (offset, length) share the entry."""
  data = read_dict(dict_path)
  entries, where, by_span, metadata = [], {}, {}, 0
  for headword, offset, length, lineno in read_index(index_path):
    if headword.startswith(("00-database-", "00database")):
      metadata += 1
      continue
    if offset + length > len(data):
      raise DictFormatError(f"{index_path}:{lineno}: {headword!r} points past the end of "
                            f"{dict_path} ({offset} + {length} > {len(data)} bytes)")
    if (offset, length) not in by_span:
      try:
        text = data[offset:offset + length].decode("utf-8")
      except UnicodeDecodeError as e:
        raise DictFormatError(f"{dict_path}: the entry of {headword!r} ({index_path}:{lineno}) "
                              f"is not UTF-8: {e}") from None
      by_span[offset, length] = len(entries)
      entries.append(parse_entry(text, offset))
    where.setdefault(normalise(headword).casefold(), by_span[offset, length])
  return entries, where, metadata


def split_definition(paragraph: str) -> tuple[str, str]:
  """(first sentence, the rest) of a paragraph."""
  parts = SENTENCE_END.split(paragraph, maxsplit=1)
  return parts[0], (parts[1] if len(parts) > 1 else "")


def build_set(entries: list[Entry], where: dict[str, int]) -> TextSet:
  """Items, training points, grouped test queries and counts (see module doc)."""
  alias_of: dict[int, list[tuple[str, ...]]] = {}  # Target position -> its aliases' headers.
  items, unresolved, aliases, empty = [], 0, 0, 0
  for position, e in enumerate(entries):
    alias = ALIAS.match(e.paragraphs[0]) if len(e.paragraphs) == 1 else None
    if alias:
      aliases += 1
      target = where.get(normalise(alias.group(1)).casefold())
      if target is None or target == position:
        unresolved += 1
      else:
        alias_of.setdefault(target, []).append(e.headers)
      continue
    paragraphs = tuple(p for p in map(clean, e.paragraphs) if WORD.search(p))
    if not paragraphs or not e.headers:
      empty += 1
      continue
    items.append((e.title, e.offset, position, dataclasses.replace(e, paragraphs=paragraphs)))
  if not items:
    raise ValueError("no entry has a definition: nothing to build")
  items.sort(key=lambda t: t[:2])
  is_item = {position for _, _, position, _ in items}
  unresolved += sum(len(v) for target, v in alias_of.items() if target not in is_item)
  definitions = [split_definition(e.paragraphs[0])[0] for *_, e in items]
  lowered = {d.casefold() for d in definitions}
  keyed, dropped, truncated, with_alias, alias_headers = [], 0, 0, 0, 0
  for i, (_, _, position, e) in enumerate(items):
    extra = tuple(h for headers in alias_of.get(position, ()) for h in headers)
    alias_headers += len(extra)
    with_alias += bool(extra)
    texts = ([split_definition(e.paragraphs[0])[1]] + list(e.paragraphs[1:])
             + [normalise(" ".join(e.headers + extra + e.categories))])
    truncated += sum(len(t) > MAX_CHARS for t in texts)
    for k, text in enumerate(truncate(t) for t in texts):
      if not text:
        continue
      if text.casefold() in lowered:
        dropped += 1
        continue
      keyed.append((shuffle_key(i, k), text, i))
  keyed.sort()
  train = [(text, i) for _, text, i in keyed]
  groups: dict[str, list[int]] = {}
  for i, d in enumerate(definitions):
    groups.setdefault(d, []).append(i)  # Ids ascending; dict keeps first-id order.
  test = list(groups.items())
  sizes = np.array([len(ids) for _, ids in test])
  per_item = np.bincount([i for _, i in train], minlength=len(items))
  largest = max(test, key=lambda t: (len(t[1]), -t[1][0]))
  stats = {
      "items": len(items),
      "alias_entries": aliases,
      "alias_entries_unresolved": unresolved,
      "entries_without_text": empty,
      "items_with_alias_headers": with_alias,
      "alias_headers_in_name_points": alias_headers,
      "items_with_categories": sum(bool(e.categories) for *_, e in items),
      "items_defined_in_one_sentence": sum(
          len(e.paragraphs) == 1 and not split_definition(e.paragraphs[0])[1]
          for *_, e in items),
      "training_points": len(train),
      "dropped_training_points": dropped,
      "truncated_training_points": truncated,
      "mean_training_points_per_item": float(per_item.mean()),
      "test_queries": len(test),
      "shared_definitions": int((sizes > 1).sum()),
      "items_with_shared_definition": int(sizes[sizes > 1].sum()),
      "largest_group": len(largest[1]),
      "largest_group_definition": largest[0],
      "mean_labels_per_test_query": float(sizes.mean()),
      "vocabulary_size": text_set.vocabulary_size(train),
      "mean_words_per_test_query": float(np.mean([len(s.split()) for s, _ in test])),
      "mean_words_per_training_point": float(np.mean([len(t.split()) for t, _ in train])),
  }
  return TextSet(items=[(e, d) for (*_, e), d in zip(items, definitions)], train=train,
                 test=test, stats=stats)


def find_files(dict_dir: str) -> tuple[str, str]:
  """(foldoc.index, foldoc.dict.dz or foldoc.dict) in ``dict_dir``."""
  index = os.path.join(dict_dir, "foldoc.index")
  dicts = [os.path.join(dict_dir, n) for n in ("foldoc.dict.dz", "foldoc.dict")]
  found = [p for p in dicts if os.path.exists(p)]
  if not os.path.exists(index) or not found:
    missing = index if not os.path.exists(index) else " or ".join(dicts)
    raise FileNotFoundError(f"{missing}: not found. Install it with `{INSTALL_COMMAND}` (as "
                            "root), or pass --dict_dir for the files kept elsewhere")
  return index, found[0]


def build(out: str, dict_dir: str = DICT_DIR, xc: bool = True, min_df: int = 2,
          max_features: int | None = 1 << 18) -> dict:
  """Read the dictionary, write every output file into ``out`` (see module doc); the stats."""
  index_path, dict_path = find_files(dict_dir)
  entries, where, metadata = read_entries(index_path, dict_path)
  try:
    data = build_set(entries, where)
  except ValueError as e:
    raise DictFormatError(f"{dict_path}: {e}") from None
  stats = {"source": "FOLDOC, Debian package dict-foldoc",
           "inputs": [text_set.file_record(index_path), text_set.file_record(dict_path)],
           "entries": len(entries), "metadata_headwords_skipped": metadata, **data.stats}
  items = (f"{i}\t{e.title}\t{d}" for i, (e, d) in enumerate(data.items))
  return text_set.write(out, data, items, stats, xc, min_df, max_features)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  text_set.add_build_arguments(p)
  p.add_argument("--dict_dir", default=DICT_DIR,
                 help="the folder of foldoc.index and foldoc.dict.dz")
  args = p.parse_args(argv)
  text_set.check_build_arguments(args)
  start = time.perf_counter()
  stats = build(args.out, args.dict_dir, xc=not args.no_xc, min_df=args.min_df,
                max_features=args.max_features or None)
  print(json.dumps(stats, indent=1, ensure_ascii=False))
  print(f"built {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
  main()
