"""The synthetic product search set: determinism, file format, split, skew, recoverability."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest

from experiments.datasets import products

FILES = ("products.tsv", "train.tsv", "test.tsv")
N, M = 20_000, 200_000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One 20K-product / 200K-query run shared by the read-only tests (it takes ~1 s)."""
  out = tmp_path_factory.mktemp("products")
  stats = products.generate(str(out), N, M, seed=0, test_every=500, block=50_000)
  return out, stats


def _queries(out):
  rows = []
  for name in ("train.tsv", "test.tsv"):
    with open(out / name, encoding="ascii") as f:
      rows += [line.rstrip("\n").split("\t") for line in f]
  return rows


def _titles(out):
  with open(out / "products.tsv", encoding="ascii") as f:
    return [line.rstrip("\n").split("\t")[1] for line in f]


def test_same_arguments_give_identical_bytes_and_another_seed_differs(tmp_path, run):
  out, _ = run
  again = tmp_path / "again"
  products.generate(str(again), N, M, seed=0, test_every=500, block=50_000)
  for name in FILES:
    assert (out / name).read_bytes() == (again / name).read_bytes(), name
  other = tmp_path / "other"
  products.generate(str(other), N, M, seed=1, test_every=500, block=50_000)
  for name in FILES:
    assert (out / name).read_bytes() != (other / name).read_bytes(), name


def test_products_file_has_one_line_per_id_in_order(run):
  out, stats = run
  with open(out / "products.tsv", encoding="ascii") as f:
    lines = [line.rstrip("\n").split("\t") for line in f]
  assert len(lines) == N == stats["num_products"]
  assert [int(l[0]) for l in lines] == list(range(N))
  for _, title, category, type_, brand in lines:
    assert title.startswith(brand + " ") and type_ in title
    assert category in products.CATALOGUE and type_ in products.CATALOGUE[category]
  assert len(set(l[1] for l in lines)) == stats["distinct_titles"] > 0.99 * N


def test_every_query_line_parses(run):
  out, _ = run
  for row in _queries(out):
    assert len(row) == 2, row
    query, labels = row
    assert query and query == query.lower() and query == " ".join(query.split()), row
    assert query.isascii() and "\t" not in query, row
    ids = [int(x) for x in labels.split(",")]
    assert 1 <= len(ids) <= 2 and ids == sorted(set(ids)), row
    assert all(0 <= i < N for i in ids), row


def test_split_sizes_match_test_every_and_stats(run):
  out, stats = run
  num_test = sum(1 for _ in open(out / "test.tsv"))
  num_train = sum(1 for _ in open(out / "train.tsv"))
  assert num_test == math.ceil(M / 500) == stats["num_test"]
  assert num_train == M - num_test == stats["num_train"]
  assert json.loads((out / "stats.json").read_text()) == stats


def test_split_counts_with_a_block_that_does_not_divide_test_every(tmp_path):
  stats = products.generate(str(tmp_path), 500, 1003, test_every=7, block=64)
  assert stats["num_test"] == math.ceil(1003 / 7)
  assert stats["num_train"] + stats["num_test"] == 1003
  assert sum(1 for _ in open(tmp_path / "test.tsv")) == stats["num_test"]


def test_popularity_is_skewed(run):
  out, _ = run
  counts = collections.Counter(int(labels.split(",")[0]) for _, labels in _queries(out))
  freq = np.array(sorted(counts.values(), reverse=True) + [0] * (N - len(counts)))
  # Zipf-Mandelbrot (1.05, offset 100) over 20K products: expected top share 0.21%, median
  # product ~1/125 of that, top 1% of products ~23% of the queries.
  assert freq[0] > 50 * max(np.median(freq), 1)
  assert freq[:N // 100].sum() > 0.15 * M


def test_most_queries_share_a_word_with_their_products_title(run):
  out, stats = run
  titles = _titles(out)
  rows = _queries(out)
  shared = 0
  for query, labels in rows:
    words = set(query.split()) - products.GENERIC_WORDS
    shared += bool(words & set(titles[int(labels.split(",")[0])].split()))
  assert shared > 0.5 * len(rows)
  # And the noise is there: not every query is a clean subset of its title.
  assert 0.03 < stats["fraction_misspelled"] < 0.3
  assert 0.03 < stats["fraction_synonym"] < 0.3
  assert 0.05 < stats["fraction_extra_generic_words"] < 0.3
  assert 1.02 < stats["mean_labels_per_query"] < 1.2
  assert 1.5 < stats["mean_words_per_query"] < 5


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_products=0), "num_products"),
    (dict(num_queries=-1), "num_queries"),
    (dict(test_every=1), "test_every"),
    (dict(block=0), "block"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
  args = dict(num_products=10, num_queries=10, test_every=5, block=4) | kwargs
  with pytest.raises(ValueError, match=name):
    products.generate(str(tmp_path), args.pop("num_products"), args.pop("num_queries"), **args)


def test_misspellings_are_near_the_word():
  rng = np.random.default_rng(0)
  for word in ("charger", "headphones", "kettle"):
    typos = products.misspellings(word, rng)
    assert len(typos) == products.MISSPELLINGS_PER_WORD and word not in typos
    for t in typos:
      assert abs(len(t) - len(word)) <= 1 and t[0] == word[0] and t.isalpha()


def test_second_product_shares_type_or_brand(run):
  out, _ = run
  with open(out / "products.tsv", encoding="ascii") as f:
    rows = [line.rstrip("\n").split("\t") for line in f]
  pairs = [labels.split(",") for _, labels in _queries(out) if "," in labels]
  assert 0.05 * M < len(pairs) < 0.15 * M
  for a, b in pairs:
    (_, _, cat_a, type_a, brand_a), (_, _, cat_b, type_b, brand_b) = rows[int(a)], rows[int(b)]
    assert type_a == type_b or (cat_a, brand_a) == (cat_b, brand_b)


def test_group_sampler_draws_another_member_by_weight():
  group = np.array([0, 1, 0, 0, 2])
  weight = np.array([1.0, 5.0, 8.0, 1.0, 3.0])
  sampler = products.GroupSampler(group, weight)
  u = np.random.default_rng(0).random(20_000)
  drawn = sampler.sample_other(np.zeros_like(u, dtype=np.int64), u)
  assert set(drawn.tolist()) == {2, 3}
  assert 0.85 < np.mean(drawn == 2) < 0.93  # 8 / 9.
  assert sampler.sample_other(np.array([1, 4]), np.array([0.3, 0.9])).tolist() == [1, 4]
