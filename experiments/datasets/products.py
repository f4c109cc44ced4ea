"""Synthetic product search set: a deterministic product catalogue and a noisy query log.

    python -m experiments.datasets.products --products 1000000 --queries 10000000 \\
        --out runs/data/products [--seed 0] [--test_every 500] [--block 100000]

It imitates the product search task of the MACH paper: a shopper types a few words and the
system must name the product bought, out of millions. No public query log of that size is
free to use, so this one is made up, from a structured vocabulary written as data (in
products_vocab.py): about 20 categories, each with product types (whose words are kept in
titles and usually in queries), made-up brands and typed attributes (colour, size, wattage,
pack count, ...).

Catalogue (held in memory; stream ``[seed, 0]``): each product has a category, a type, a
brand, 2-4 attributes and a model token ("x200", "pro 3"), so its title reads like
"voltix usb c charger 65w black pro 3". Popularity is Zipf-Mandelbrot (exponent 1.05,
offset 100) over a seeded permutation of the ids (ids are not ordered by popularity).

Queries (never all in memory): block j of ``--block`` queries uses its own stream
``[seed, 1, j]``, so the output is byte-identical for the same arguments. A query keeps 1-5
of its bought product's title words (type words usually, brand and model seldom), sometimes
reordered, with synonyms ("charger" -> "power adapter"), misspellings (a dropped, swapped,
doubled or neighbouring-key character) and generic extras ("cheap", "near me"); a few are
pure category queries ("kitchen stuff"). About 10% also list a second product bought (same
type or same brand, by popularity). Query i goes to test when i % test_every == 0.

Writes OUT/products.tsv (``id<TAB>title<TAB>category<TAB>type<TAB>brand``), OUT/train.tsv
and OUT/test.tsv (``query<TAB>id1,id2``, ids ascending) and OUT/stats.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

# The vocabulary, written as data; every name stays reachable here (products.CATALOGUE, ...).
# GENERIC_WORDS is used only by the tests.
from experiments.datasets.products_vocab import (  # noqa: F401
  ATTRIBUTES,
  BRAND_PREFIXES,
  BRAND_SUFFIXES,
  CATALOGUE,
  CATEGORY_SUFFIXES,
  GENERIC_PREFIXES,
  GENERIC_SUFFIXES,
  GENERIC_WORDS,
  MODEL_LETTERS,
  MODEL_WORDS,
  SYNONYMS,
)

# Popularity of the product at rank r (0-based): (r + 1 + ZIPF_OFFSET) ** -ZIPF_EXPONENT, a
# Zipf-Mandelbrot law. Without the offset the top product of 1M took 9.5% of all queries
# (no real store is that concentrated); with it the top one takes about 0.13% and the top
# 1% of products about 56% of the queries (by the formula), a long tail as in search logs.
ZIPF_EXPONENT = 1.05
ZIPF_OFFSET = 100
VOCAB_SEED = 20240611  # Brand assignment: fixed, so --seed never changes the vocabulary.

# ---------------------------------------------------------------------------------------------
# Each category draws 20-60 brands (prefix + suffix, "volt" + "ix" = "voltix") with VOCAB_SEED,
# so brands overlap across categories as real ones do.
BRANDS_PER_CATEGORY = (20, 60)

# Title slots: 0 brand, 1-3 type words, 4-7 attributes, 8 model.
TYPE_WORDS = 3
MAX_ATTRS = 4
MAX_KINDS = 5
TITLE_SLOTS = 1 + TYPE_WORDS + MAX_ATTRS + 1
# How strongly a query keeps a title slot (weights of a weighted draw without replacement):
# the type's last word (its head noun, "charger") almost always, brand and model seldom.
SLOT_WEIGHTS = np.array([0.8, 3.0, 3.0, 3.0, 1.2, 1.2, 1.2, 1.2, 0.25])
HEAD_WEIGHT = 40.0
QUERY_WORDS = (1, 2, 3, 4, 5)  # Title words a query keeps (before synonyms and extras).
QUERY_WORD_PROBS = (0.12, 0.30, 0.30, 0.17, 0.11)
P_REORDER = 0.2
P_SYNONYM = 0.25  # Per word that has a synonym.
P_MISSPELL = 0.07  # Per word of 4+ letters.
P_PREFIX = 0.07
P_SUFFIX = 0.09
P_CATEGORY_QUERY = 0.015
P_SECOND_LABEL = 0.10
MISSPELLINGS_PER_WORD = 4
QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


# ---------------------------------------------------------------------------------------------
def _key_neighbours() -> dict[str, str]:
  """Keys next to each letter on a QWERTY keyboard (same row and the rows above and below)."""
  near = {}
  for r, row in enumerate(QWERTY_ROWS):
    for i, ch in enumerate(row):
      keys = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
      for other in (r - 1, r + 1):
        if 0 <= other < len(QWERTY_ROWS):
          keys += [QWERTY_ROWS[other][j] for j in (i - 1, i) if
                   0 <= j < len(QWERTY_ROWS[other])]
      near[ch] = "".join(keys)
  return near


KEY_NEIGHBOURS = _key_neighbours()


def misspell(word: str, rng: np.random.Generator) -> str:
  """One typo: drop, swap, double or hit a neighbouring key, never on the first letter."""
  i = int(rng.integers(1, len(word)))
  op = int(rng.integers(4))
  if op == 0:
    return word[:i] + word[i + 1:]
  if op == 1:
    j = i if i < len(word) - 1 else i - 1
    return word[:j] + word[j + 1] + word[j] + word[j + 2:]
  if op == 2:
    return word[:i] + word[i] + word[i:]
  near = KEY_NEIGHBOURS.get(word[i], "")
  if not near:
    return word[:i] + word[i + 1:]
  return word[:i] + near[int(rng.integers(len(near)))] + word[i + 1:]


def misspellings(word: str, rng: np.random.Generator, k: int = MISSPELLINGS_PER_WORD) -> list[str]:
  """Up to k distinct typos of ``word``, none equal to it."""
  out: list[str] = []
  for _ in range(8 * k):
    typo = misspell(word, rng)
    if typo != word and typo not in out:
      out.append(typo)
      if len(out) == k:
        break
  return out


def _padded(rows: list[list[int]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(matrix padded with -1, row lengths) for ragged integer rows."""
  width = width or max(len(r) for r in rows)
  m = np.full((len(rows), width), -1, np.int64)
  for i, r in enumerate(rows):
    m[i, :len(r)] = r
  return m, np.array([len(r) for r in rows], np.int64)


@dataclasses.dataclass
class Lexicon:
  """Every string a title or query can hold, and the structure that ties them together.

  A token is a phrase ("usb", "stainless steel", "pro 3"); tokens are what queries keep,
  drop or swap, so a multi-word attribute behaves as one unit, as shoppers type them.
  """
  tokens: list[str]
  token_words: np.ndarray  # Words per token.
  categories: list[str]
  category_token: np.ndarray  # (C,)
  types: list[str]
  type_category: np.ndarray  # (T,)
  type_tokens: np.ndarray  # (T, TYPE_WORDS), -1 padded.
  type_len: np.ndarray  # (T,)
  type_kinds: np.ndarray  # (T, MAX_KINDS), -1 padded.
  type_nkinds: np.ndarray
  kind_values: np.ndarray  # (K, max values), -1 padded.
  kind_nvalues: np.ndarray
  category_brands: np.ndarray  # (C, max brands) token ids, -1 padded.
  category_nbrands: np.ndarray
  brand_names: list[str]  # Distinct brands (for stats).
  models: np.ndarray  # Model token ids.
  synonyms: np.ndarray  # (V, max synonyms), -1 padded.
  nsynonyms: np.ndarray  # (V,)
  typo_first: np.ndarray  # (V,) id of the token's first typo, or -1.
  ntypos: np.ndarray  # (V,)
  prefixes: np.ndarray
  suffixes: np.ndarray
  category_suffixes: np.ndarray


def build_lexicon(seed: int = 0) -> Lexicon:
  """The vocabulary with synonyms and typos; only the typos depend on ``seed``."""
  tokens: list[str] = []
  ids: dict[str, int] = {}

  def add(s: str) -> int:
    if s not in ids:
      ids[s] = len(tokens)
      tokens.append(s)
    return ids[s]

  categories = list(CATALOGUE)
  category_token = np.array([add(c) for c in categories])
  kinds = list(ATTRIBUTES)
  kind_values, kind_nvalues = _padded([[add(v) for v in ATTRIBUTES[k].split("|")]
                                       for k in kinds])
  types, type_category, type_words, type_kinds = [], [], [], []
  for c, name in enumerate(categories):
    for t, kind_list in CATALOGUE[name].items():
      types.append(t)
      type_category.append(c)
      type_words.append([add(w) for w in t.split()])
      type_kinds.append([kinds.index(k) for k in kind_list.split()])
  type_tokens, type_len = _padded(type_words, TYPE_WORDS)
  type_kinds_m, type_nkinds = _padded(type_kinds, MAX_KINDS)
  brand_pool = [p + s for p in BRAND_PREFIXES for s in BRAND_SUFFIXES]
  brand_rng = np.random.default_rng(VOCAB_SEED)
  lo, hi = BRANDS_PER_CATEGORY
  brand_rows = []
  for _ in categories:
    picked = brand_rng.choice(len(brand_pool), size=int(brand_rng.integers(lo, hi + 1)),
                              replace=False)
    brand_rows.append([add(brand_pool[i]) for i in sorted(picked)])
  category_brands, category_nbrands = _padded(brand_rows)
  brand_names = sorted({tokens[b] for row in brand_rows for b in row})
  models = [f"{l}{n}" for l in MODEL_LETTERS for n in range(100, 1000, 25)]
  models += [f"{w} {n}" for w in MODEL_WORDS for n in range(2, 10)]
  models += MODEL_WORDS + [f"gen{n}" for n in range(2, 7)] + [f"mk{n}" for n in range(2, 6)]
  models_arr = np.array([add(m) for m in models])
  prefixes = np.array([add(p) for p in GENERIC_PREFIXES])
  suffixes = np.array([add(s) for s in GENERIC_SUFFIXES])
  category_suffixes = np.array([add(s) for s in CATEGORY_SUFFIXES])
  syn_of = {ids[w]: [add(a) for a in alts] for w, alts in SYNONYMS.items() if w in ids}
  syn_rows = [syn_of.get(i, []) for i in range(len(tokens))]
  synonyms, nsynonyms = _padded(syn_rows)
  # Typos of every single-word alphabetic token of 4+ letters, appended after the rest.
  typo_rng = np.random.default_rng([seed, 2])
  base = len(tokens)
  typo_first = np.full(base, -1, np.int64)
  ntypos = np.zeros(base, np.int64)
  for i in range(base):
    word = tokens[i]
    if len(word) >= 4 and word.isalpha():
      typos = misspellings(word, typo_rng)
      typo_first[i] = len(tokens)
      ntypos[i] = len(typos)
      tokens.extend(typos)  # May repeat a real token's text; ids stay distinct on purpose.
  synonyms = np.vstack([synonyms, np.full((len(tokens) - base, synonyms.shape[1]), -1)])
  nsynonyms = np.concatenate([nsynonyms, np.zeros(len(tokens) - base, np.int64)])
  typo_first = np.concatenate([typo_first, np.full(len(tokens) - base, -1)])
  ntypos = np.concatenate([ntypos, np.zeros(len(tokens) - base, np.int64)])
  return Lexicon(
      tokens=tokens, token_words=np.array([t.count(" ") + 1 for t in tokens]),
      categories=categories, category_token=category_token, types=types,
      type_category=np.array(type_category), type_tokens=type_tokens, type_len=type_len,
      type_kinds=type_kinds_m, type_nkinds=type_nkinds, kind_values=kind_values,
      kind_nvalues=kind_nvalues, category_brands=category_brands,
      category_nbrands=category_nbrands, brand_names=brand_names, models=models_arr,
      synonyms=synonyms, nsynonyms=nsynonyms, typo_first=typo_first, ntypos=ntypos,
      prefixes=prefixes, suffixes=suffixes, category_suffixes=category_suffixes)


class GroupSampler:
  """Draws another product of a product's group (its type, its brand) by popularity."""

  def __init__(self, group: np.ndarray, weight: np.ndarray):
    self.group = group
    self.order = np.argsort(group, kind="stable")
    self.position = np.empty_like(self.order)
    self.position[self.order] = np.arange(len(self.order))
    sorted_group = group[self.order]
    num_groups = int(group.max()) + 1
    self.start = np.searchsorted(sorted_group, np.arange(num_groups))
    self.end = np.searchsorted(sorted_group, np.arange(num_groups), side="right")
    self.cum = np.cumsum(weight[self.order])

  def _before(self, pos: np.ndarray) -> np.ndarray:
    return np.where(pos > 0, self.cum[np.maximum(pos - 1, 0)], 0.0)

  def sample_other(self, ids: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For each product, another of its group drawn by popularity (itself if it is alone).

    The draw skips the product's own share of the group's cumulative weight.
    """
    g = self.group[ids]
    start, end, pos = self.start[g], self.end[g], self.position[ids]
    lo, self_lo, self_hi = self._before(start), self._before(pos), self.cum[pos]
    x = lo + u * (self.cum[end - 1] - lo - (self_hi - self_lo))
    x = np.where(x >= self_lo, x + (self_hi - self_lo), x)
    found = np.clip(np.searchsorted(self.cum, x, side="right"), start, end - 1)
    return self.order[np.where(end - start > 1, found, pos)]


@dataclasses.dataclass
class Catalogue:
  lexicon: Lexicon
  product_type: np.ndarray  # (N,)
  brand: np.ndarray  # (N,) token id.
  title_tokens: np.ndarray  # (N, TITLE_SLOTS), -1 padded.
  rank_to_id: np.ndarray  # Product id of each popularity rank (rank 0 = most popular).
  rank_cdf: np.ndarray  # Zipf CDF over ranks.
  brand_group: np.ndarray  # (N,) index of the product's (category, brand) pair.
  same_type: GroupSampler
  same_brand: GroupSampler

  def __len__(self) -> int:
    return len(self.product_type)

  def titles(self) -> list[str]:
    return _render(self.title_tokens, self.lexicon.tokens)


def build_catalogue(lex: Lexicon, num_products: int, seed: int = 0) -> Catalogue:
  """``num_products`` products with Zipf popularity, vectorised (stream ``[seed, 0]``)."""
  n = num_products
  rng = np.random.default_rng([seed, 0])
  t = rng.integers(len(lex.types), size=n)
  c = lex.type_category[t]
  brand = lex.category_brands[c, (rng.random(n) * lex.category_nbrands[c]).astype(np.int64)]
  # Attributes: a random 2-4 of the type's kinds, kept in the type's kind order.
  nattr = np.minimum(rng.choice([2, 3, 4], p=[0.4, 0.4, 0.2], size=n), lex.type_nkinds[t])
  keys = rng.random((n, MAX_KINDS))
  keys[np.arange(MAX_KINDS) >= lex.type_nkinds[t][:, None]] = np.inf
  chosen = np.argsort(keys, axis=1)[:, :MAX_ATTRS]
  chosen = np.where(np.arange(MAX_ATTRS) < nattr[:, None], chosen, MAX_KINDS)
  chosen.sort(axis=1)
  has = chosen < MAX_KINDS
  kind = lex.type_kinds[t[:, None], np.minimum(chosen, MAX_KINDS - 1)]
  value = (rng.random((n, MAX_ATTRS)) * lex.kind_nvalues[kind]).astype(np.int64)
  attrs = np.where(has, lex.kind_values[kind, value], -1)
  model = lex.models[rng.integers(len(lex.models), size=n)]
  title = np.concatenate([brand[:, None], lex.type_tokens[t], attrs, model[:, None]], axis=1)
  # Compact to the left so a title is a prefix of its row.
  title = np.take_along_axis(title, np.argsort(title < 0, axis=1, kind="stable"), axis=1)
  rank_to_id = rng.permutation(n)
  rank_weight = (np.arange(n) + 1.0 + ZIPF_OFFSET) ** -ZIPF_EXPONENT
  weight = np.empty(n)
  weight[rank_to_id] = rank_weight
  cdf = np.cumsum(rank_weight)
  cdf /= cdf[-1]
  _, brand_group = np.unique(c * len(lex.tokens) + brand, return_inverse=True)
  brand_group = brand_group.reshape(-1)
  return Catalogue(lexicon=lex, product_type=t, brand=brand, title_tokens=title,
                   rank_to_id=rank_to_id, rank_cdf=cdf, brand_group=brand_group,
                   same_type=GroupSampler(t, weight),
                   same_brand=GroupSampler(brand_group, weight))


def _render(token_rows: np.ndarray, tokens: list[str]) -> list[str]:
  """Each row's tokens (a -1 padded prefix) joined by single spaces."""
  lengths = (token_rows >= 0).sum(axis=1).tolist()
  get = tokens.__getitem__
  return [" ".join(map(get, row[:k])) for row, k in zip(token_rows.tolist(), lengths)]


@dataclasses.dataclass
class QueryBlock:
  queries: list[str]
  labels: list[str]
  num_labels: np.ndarray
  num_words: np.ndarray
  misspelled: np.ndarray  # Per query flags.
  synonym: np.ndarray
  extra: np.ndarray
  category_query: np.ndarray


def query_tokens(cat: Catalogue, bought: np.ndarray, rng: np.random.Generator):
  """(token rows, flags) for queries whose bought product is ``bought``; all vectorised."""
  lex = cat.lexicon
  b = len(bought)
  rows = np.arange(b)
  title = cat.title_tokens[bought]
  # The canonical slot of each compacted title column (0 brand, 1-3 type, 4-7 attrs, 8 model).
  tlen = lex.type_len[cat.product_type[bought]]
  ntitle = (title >= 0).sum(axis=1)
  col = np.arange(TITLE_SLOTS)
  slot = np.where(col <= tlen[:, None], col, col - tlen[:, None] + TYPE_WORDS)
  slot = np.where(col == ntitle[:, None] - 1, TITLE_SLOTS - 1, np.minimum(slot, TITLE_SLOTS - 2))
  weight = SLOT_WEIGHTS[slot]
  weight[rows, tlen] = HEAD_WEIGHT
  # Draw slots by weight without replacement (an exponential race) and keep them while the
  # words kept stay within `want` (the first drawn is always kept, even a 2-word phrase).
  race = rng.exponential(size=title.shape) / weight
  race[title < 0] = np.inf
  want = rng.choice(QUERY_WORDS, p=QUERY_WORD_PROBS, size=b)
  by_race = np.argsort(race, axis=1)
  words = np.where(title >= 0, lex.token_words[np.maximum(title, 0)], 0)
  cum = np.cumsum(np.take_along_axis(words, by_race, axis=1), axis=1)
  keep_sorted = ((cum <= want[:, None]) | (col == 0)) & (np.take_along_axis(title, by_race, 1) >= 0)
  keep = np.zeros_like(keep_sorted)
  np.put_along_axis(keep, by_race, keep_sorted, axis=1)
  reorder = rng.random(b) < P_REORDER
  order_key = np.where(reorder[:, None], rng.random(title.shape), col)
  order_key[~keep] = np.inf
  order = np.argsort(order_key, axis=1)[:, :max(QUERY_WORDS)]
  q = np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(title, order, 1), -1)
  safe = np.maximum(q, 0)
  # Synonyms, then typos (a synonym may itself be misspelled).
  nsyn = np.where(q >= 0, lex.nsynonyms[safe], 0)
  use_syn = (rng.random(q.shape) < P_SYNONYM) & (nsyn > 0)
  pick = (rng.random(q.shape) * np.maximum(nsyn, 1)).astype(np.int64)
  q = np.where(use_syn, lex.synonyms[safe, pick], q)
  safe = np.maximum(q, 0)
  ntypo = np.where(q >= 0, lex.ntypos[safe], 0)
  use_typo = (rng.random(q.shape) < P_MISSPELL) & (ntypo > 0)
  typo = lex.typo_first[safe] + (rng.random(q.shape) * np.maximum(ntypo, 1)).astype(np.int64)
  q = np.where(use_typo, typo, q)
  # A few pure category queries ("kitchen stuff"), whatever was bought.
  is_cat = rng.random(b) < P_CATEGORY_QUERY
  cat_suffix = np.where(rng.random(b) < 0.7,
                        lex.category_suffixes[rng.integers(len(lex.category_suffixes), size=b)],
                        -1)
  category = lex.type_category[cat.product_type[bought]]
  q[is_cat] = -1
  q[is_cat, 0] = lex.category_token[category[is_cat]]
  q[is_cat, 1] = cat_suffix[is_cat]
  prefix = np.where(rng.random(b) < P_PREFIX,
                    lex.prefixes[rng.integers(len(lex.prefixes), size=b)], -1)
  suffix = np.where(rng.random(b) < P_SUFFIX,
                    lex.suffixes[rng.integers(len(lex.suffixes), size=b)], -1)
  full = np.concatenate([prefix[:, None], q, suffix[:, None]], axis=1)
  full = np.take_along_axis(full, np.argsort(full < 0, axis=1, kind="stable"), axis=1)
  flags = {
      "misspelled": (use_typo & ~is_cat[:, None]).any(axis=1),
      "synonym": (use_syn & ~is_cat[:, None]).any(axis=1),
      "extra": (prefix >= 0) | (suffix >= 0),
      "category_query": is_cat,
  }
  return full, flags


def query_block(cat: Catalogue, num: int, rng: np.random.Generator) -> QueryBlock:
  """``num`` queries with their labels, drawn from ``rng``."""
  bought = cat.rank_to_id[np.minimum(np.searchsorted(cat.rank_cdf, rng.random(num)),
                                     len(cat) - 1)]
  full, flags = query_tokens(cat, bought, rng)
  # A second product bought: another of the same type or of the same brand, by popularity.
  second = np.where(rng.random(num) < 0.5,
                    cat.same_type.sample_other(bought, rng.random(num)),
                    cat.same_brand.sample_other(bought, rng.random(num)))
  has_second = (rng.random(num) < P_SECOND_LABEL) & (second != bought)
  lo = np.where(has_second, np.minimum(bought, second), bought).tolist()
  hi = np.maximum(bought, second).tolist()
  labels = [f"{a},{h}" if two else str(a) for a, h, two in zip(lo, hi, has_second.tolist())]
  words = np.where(full >= 0, cat.lexicon.token_words[np.maximum(full, 0)], 0).sum(axis=1)
  return QueryBlock(queries=_render(full, cat.lexicon.tokens), labels=labels,
                    num_labels=1 + has_second, num_words=words, **flags)


def _check_args(num_products: int, num_queries: int, test_every: int, block: int) -> None:
  for name, value, least in (("num_products", num_products, 1), ("num_queries", num_queries, 1),
                             ("test_every", test_every, 2), ("block", block, 1)):
    if int(value) != value or value < least:
      raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def generate(out: str, num_products: int, num_queries: int, *, seed: int = 0,
             test_every: int = 500, block: int = 100_000) -> dict:
  """Writes products.tsv, train.tsv, test.tsv and stats.json under ``out``; returns the stats.

  Raises:
    ValueError: naming the argument, for num_products or num_queries < 1, test_every < 2 or
      block < 1.
  """
  _check_args(num_products, num_queries, test_every, block)
  started = time.perf_counter()
  lex = build_lexicon(seed)
  cat = build_catalogue(lex, num_products, seed)
  os.makedirs(out, exist_ok=True)
  titles = cat.titles()
  _write_products(os.path.join(out, "products.tsv"), cat, titles)
  distinct_titles = len(set(titles))
  del titles
  catalogue_seconds = time.perf_counter() - started
  totals = dict.fromkeys(["train", "test", "labels", "words", "misspelled", "synonym", "extra",
                          "category_query"], 0)
  with open(os.path.join(out, "train.tsv"), "w", encoding="ascii", buffering=1 << 20) as train, \
       open(os.path.join(out, "test.tsv"), "w", encoding="ascii", buffering=1 << 20) as test:
    for j, begin in enumerate(range(0, num_queries, block)):
      num = min(block, num_queries - begin)
      qb = query_block(cat, num, np.random.default_rng([seed, 1, j]))
      lines = [f"{q}\t{l}\n" for q, l in zip(qb.queries, qb.labels)]
      is_test = (np.arange(begin, begin + num) % test_every == 0).tolist()
      test_lines = [line for line, t in zip(lines, is_test) if t]
      test.write("".join(test_lines))
      train.write("".join(line for line, t in zip(lines, is_test) if not t))
      totals["test"] += len(test_lines)
      totals["train"] += num - len(test_lines)
      totals["labels"] += int(qb.num_labels.sum())
      totals["words"] += int(qb.num_words.sum())
      for key in ("misspelled", "synonym", "extra", "category_query"):
        totals[key] += int(getattr(qb, key).sum())
  stats = {
      "args": {"num_products": num_products, "num_queries": num_queries, "seed": seed,
               "test_every": test_every, "block": block},
      "num_products": num_products,
      "num_train": totals["train"], "num_test": totals["test"],
      "distinct_titles": distinct_titles,
      "duplicate_titles": num_products - distinct_titles,
      "mean_labels_per_query": totals["labels"] / num_queries,
      "mean_words_per_query": totals["words"] / num_queries,
      "num_categories": len(lex.categories), "num_types": len(lex.types),
      "num_brands": len(lex.brand_names), "num_attribute_kinds": len(ATTRIBUTES),
      "num_models": len(lex.models),
      "fraction_misspelled": totals["misspelled"] / num_queries,
      "fraction_synonym": totals["synonym"] / num_queries,
      "fraction_extra_generic_words": totals["extra"] / num_queries,
      "fraction_category_queries": totals["category_query"] / num_queries,
      "zipf_exponent": ZIPF_EXPONENT, "zipf_offset": ZIPF_OFFSET,
      "seconds_catalogue": round(catalogue_seconds, 2),
      "seconds": round(time.perf_counter() - started, 2),
      "realism": REALISM,
  }
  with open(os.path.join(out, "stats.json"), "w") as f:
    json.dump(stats, f, indent=1)
  return stats


REALISM = (
    "Realistic: Zipf popularity over products (a few products take much of the traffic, most "
    "are rarely bought); structured titles (brand, type, attributes, model) from a "
    "category/type/brand hierarchy; short queries (1-5 words) that keep the type's head noun "
    "and seldom the brand or model; typical noise: dropped and reordered words, synonyms, "
    "keyboard typos, generic words ('cheap', 'near me'), a few category-only queries; some "
    "queries with a second product bought. Not realistic: words carry no real semantics "
    "(no relatedness beyond the synonym table); brand and model names are made up; queries "
    "are independent (no sessions, users, time or seasonality); the bought product's title "
    "always contains the query's non-noise words; popularity does not depend on brand, price "
    "or category; titles of one type share one template; typo and synonym rates are "
    "constant.")


def _write_products(path: str, cat: Catalogue, titles: list[str]) -> None:
  lex = cat.lexicon
  category = lex.type_category[cat.product_type].tolist()
  types = cat.product_type.tolist()
  brands = cat.brand.tolist()
  with open(path, "w", encoding="ascii", buffering=1 << 20) as f:
    step = 100_000
    for begin in range(0, len(titles), step):
      f.write("".join(
          f"{i}\t{titles[i]}\t{lex.categories[category[i]]}\t{lex.types[types[i]]}\t"
          f"{lex.tokens[brands[i]]}\n" for i in range(begin, min(begin + step, len(titles)))))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--products", type=int, required=True, help="number of products")
  p.add_argument("--queries", type=int, required=True, help="number of queries")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--test_every", type=int, default=500,
                 help="query i goes to test when i %% test_every == 0")
  p.add_argument("--block", type=int, default=100_000, help="queries generated per block")
  args = p.parse_args(argv)
  try:
    stats = generate(args.out, args.products, args.queries, seed=args.seed,
                     test_every=args.test_every, block=args.block)
  except ValueError as e:
    raise SystemExit(str(e)) from None
  print(json.dumps({k: v for k, v in stats.items() if k != "realism"}, indent=1))


if __name__ == "__main__":
  main()
