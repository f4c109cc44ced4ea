"""experiments.datasets.subset: every n-th item of a query-log set, renumbered."""

import json

import pytest

from experiments.datasets.subset import subset
from mach_jax.data.query_log import QueryLogError


def _write(folder, name, lines):
  (folder / name).write_text("".join(line + "\n" for line in lines))


def test_keeps_every_nth_item_and_the_lines_that_still_name_one(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  _write(src, "items.tsv", [f"{i}\titem {i}" for i in range(6)])
  _write(src, "train.tsv", ["a\t0", "b\t1", "c\t2,3", "d\t4,0", "e\t5"])
  _write(src, "test.tsv", ["q\t1,2", "r\t3"])
  stats = subset(str(src), str(tmp_path / "out"), every=2)
  out = tmp_path / "out"
  assert (out / "items.tsv").read_text() == "0\titem 0\n1\titem 2\n2\titem 4\n"
  assert (out / "train.tsv").read_text() == "a\t0\nc\t1\nd\t2,0\n"
  assert (out / "test.tsv").read_text() == "q\t1\n"
  assert stats == json.loads((out / "stats.json").read_text())
  assert stats["train"] == {"lines": 3, "dropped_lines": 2}
  assert stats["test"] == {"lines": 1, "dropped_lines": 1}


def test_a_malformed_source_is_named_with_its_line(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  _write(src, "items.tsv", ["0\tx", "1\ty"])
  _write(src, "train.tsv", ["a\t0", "b\t7"])
  _write(src, "test.tsv", ["q\t1"])
  with pytest.raises(QueryLogError, match=r"train.tsv:2: product id 7 is outside \[0, 2\)"):
    subset(str(src), str(tmp_path / "out"), every=1)
  _write(src, "items.tsv", ["0\tx", "5\ty"])
  with pytest.raises(QueryLogError, match=r"items.tsv:2: expected the id 1"):
    subset(str(src), str(tmp_path / "out"), every=1)
