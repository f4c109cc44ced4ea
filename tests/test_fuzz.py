"""Every input parser against an oracle of its grammar, on a few hundred hypothesis cases
each (the campaign: ``python -m experiments.bench.fuzz --cases 10000``); and the faults the
fuzzer found, pinned."""

import gzip

import pytest

from experiments.bench import fuzz
from mach_jax.data.query_log import QueryLog, QueryLogError
from mach_jax.data.text import TextFeaturizer
from mach_jax.data.xc import XCFormatError, read_xc
from mach_jax.search import read_titles
from tests.helpers import ROOT

SOURCE = f"{ROOT}/tests/data/model_v1/xc"


@pytest.mark.parametrize("name", ["xc (plain)", "xc (gzip)", "query log", "catalogue",
                                  "search queries", "model.json"])
def test_parser_agrees_with_its_grammar(tmp_path, name):
  row = fuzz.run(name, fuzz.targets(str(tmp_path), SOURCE)[name], cases=150, seed=1)
  assert row["first_failures"] == []
  # Both sides of the property ran (a query file is refused only for invalid UTF-8).
  assert row["accepted"] > 20 and row["refused"] > (5 if name == "search queries" else 20)


@pytest.mark.parametrize("body, match", [
    ("1 4 2\n0 \u0663:1\n", r"x.txt:2: bad feature token"),  # An Arabic-Indic digit.
    ("1 4 2\n0 1:1e300\n", r"x.txt:2: feature 1 has non-finite value '1e300' \(beyond"),
    ("1 4 2\n0 1:1\u00a02:1\n", r"x.txt:2: unexpected character '\\xa0'"),
    ("1 4 2\n0,,1 1:1\n", r"x.txt:2: bad label field '0,,1'"),
    ("\u00b2 4 2\n", r"x.txt:1: expected header"),
    ("1 4 2\n0 1:1_0\n", r"x.txt:2: bad feature token"),
])
def test_xc_reader_refuses_what_python_would_have_parsed(tmp_path, body, match):
  path = tmp_path / "x.txt"
  path.write_text(body, encoding="utf-8")
  with pytest.raises(XCFormatError, match=match):
    read_xc(str(path))


def test_damaged_input_names_file_and_line(tmp_path):
  xc = tmp_path / "x.txt"
  xc.write_bytes(b"2 4 2\n0 1:1\n1 \xff2:1\n")
  with pytest.raises(XCFormatError, match=r"x.txt:3: not valid UTF-8"):
    read_xc(str(xc))
  gz = tmp_path / "x.txt.gz"
  gz.write_bytes(gzip.compress(b"1 4 2\n0 1:1\n")[:-6])
  with pytest.raises(XCFormatError, match=r"x.txt.gz: damaged gzip stream"):
    read_xc(str(gz))
  log = tmp_path / "q.tsv"
  log.write_bytes(b"usb\t1\nsofa \xc3\t2\n")
  with pytest.raises(QueryLogError, match=r"q.tsv:2: not valid UTF-8"):
    QueryLog(str(log), TextFeaturizer(num_features=64), 5)
  items = tmp_path / "items.tsv"
  items.write_text("0\tcable\n1\tsofa\n0\tmug\n")
  with pytest.raises(ValueError, match=r"items.tsv:3: id 0 already has a title, on line 1"):
    read_titles(str(items), 2)


def test_crlf_bom_and_no_final_newline_read_as_the_plain_file(tmp_path):
  plain, odd = tmp_path / "a.txt", tmp_path / "b.txt"
  plain.write_bytes(b"2 4 2\n0 1:1\n1 2:0.5\n")
  odd.write_bytes(b"\xef\xbb\xbf2 4 2\r\n0 1:1\r\n1 2:0.5")
  a, b = read_xc(str(plain)), read_xc(str(odd))
  assert (a.X != b.X).nnz == 0 and (a.Y != b.Y).nnz == 0
