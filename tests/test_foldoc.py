"""The FOLDOC term-lookup set builder: a dictd index and dictionary in, items / query logs /
XC files out."""

import filecmp
import gzip
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

from experiments.datasets import foldoc, text_set
from mach_jax.data.query_log import QueryLog
from mach_jax.data.text import TextFeaturizer
from mach_jax.data.xc import read_xc
from tests.helpers import query_log_ids, written_lines

# Ten real entries of Debian's dict-foldoc (20230119-1), byte for byte, and one written by
# hand ("frame language"), in the dictd format: foldoc.dict and foldoc.index, whose
# headwords "tts", "#" and "algol" share the entry of "text to speech", "hash" and
# "algol 60". They cover: dictd's own 00-database-short entry; categories ("<algorithm,
# programming>"); cross-reference braces, a URL and date lines; numbered senses, each with
# its own categories (hash); an alias that resolves ("Algorithmic Language" -> {Algol 60})
# and one that does not (AAL -> {ATM Adaptation Layer}, which the file lacks); two items
# with one definition (CYCL and THEO: "A frame language."), and a paragraph equal to that
# definition (the hand-written entry's), which is dropped.
FIXTURES = os.path.join(os.path.dirname(__file__), "data", "foldoc")

ITEMS = [
    "0\tALGOL 60\tALGOrithmic Language 1960.",
    "1\tCYCL\tA frame language.",
    "2\tNISO\tNational Information Standards Organisation (USA).",
    "3\tTHEO\tA frame language.",
    "4\tText To Speech\t(TTS) Automatic conversion of text streams to voice.",
    "5\talgorithm\tA detailed sequence of actions to perform to accomplish some task.",
    "6\tframe language\tA language for representing knowledge as frames.",
    "7\thash\thash character.",
]
TEST = [
    "ALGOrithmic Language 1960.\t0",
    "A frame language.\t1,3",
    "National Information Standards Organisation (USA).\t2",
    "(TTS) Automatic conversion of text streams to voice.\t4",
    "A detailed sequence of actions to perform to accomplish some task.\t5",
    "A language for representing knowledge as frames.\t6",
    "hash character.\t7",
]
# Per item, in the entry's order (k = index within the item): the rest of the first
# paragraph after the definition (None where there is none), the later paragraphs (None for
# item 6's "A frame language.", dropped), the name point. Skipped texts keep their k.
TRAIN = {
    0: [None,
        "A portable language for scientific computations. ALGOL 60 was small and elegant. It "
        "was block-structured, nested, recursive and free form. It was also the first language "
        "to be described in BNF.",
        "There were three lexical representations: hardware, reference, and publication. The "
        "only structured data types were arrays, but they were permitted to have lower bounds "
        "and could be dynamic. It also had conditional expressions; it introduced :=; "
        'if-then-else; very general "for" loops; switch declaration (an array of statement '
        "labels generalising Fortran's computed goto). Parameters were call-by-name and "
        'call-by-value. It had static local "own" variables. It lacked user-defined types, '
        "character manipulation and standard I/O.",
        "See also EULER, ALGOL 58, ALGOL 68, Foogol.",
        '["Report on the Algorithmic Language ALGOL 60", Peter Naur ed., CACM 3(5):299-314, '
        "May 1960].",
        "ALGOL 60 ALGOL Algorithmic Language language"],
    1: [None, '["Building Large Knowledge-Based Systems", Doug B. Lenat et al, A-W 1990].', "CYCL"],
    2: ["NISO Standards cover many aspects of library science, publishing, and information "
        "services, and address the application of both traditional and new technologies to "
        "information services.",
        "NISO"],
    3: [None,
        '["Theo: A Framework for Self-Improving Systems", Mitchell et al, in Architectures for '
        'Intelligence, K. VanLehn ed, Erlbaum, 1989].',
        "THEO"],
    4: [None, "[Details?]", "Text To Speech TTS application"],
    5: ["Named after the Iranian, Islamic mathematician, astronomer, astrologer and geographer, "
        "Muhammad ibn Musa al-Khwarizmi.",
        "Technically, an algorithm must reach a result after a finite number of steps, thus "
        "ruling out brute force search methods for certain problems, though some might claim "
        "that brute force search was also a valid (generic) algorithm. The term is also used "
        "loosely for any sequence of actions (which may or may not terminate).",
        "Paul E. Black's Dictionary of Algorithms, Data Structures, and Problems .",
        "algorithm algorithm programming"],
    6: [None, None, "frame language language"],
    7: [None, "hash coding.", "The preferred term for a Perl associative array.",
        "hash # character programming"],
}
OUTPUTS = ("items.tsv", "train.tsv", "test.tsv", "train.txt.gz", "test.txt.gz", "stats.json")


def _build(out, dict_dir=FIXTURES, *extra):
  foldoc.main(["--out", str(out), "--dict_dir", str(dict_dir), "--min_df", "1", *extra])
  with open(os.path.join(out, "stats.json"), encoding="utf-8") as f:
    return json.load(f)


def _train_lines():
  """TRAIN in the written order: by text_set.shuffle_key of (item id, k)."""
  keyed = [(text_set.shuffle_key(i, k), f"{t}\t{i}") for i, texts in TRAIN.items()
           for k, t in enumerate(texts) if t is not None]
  return [line for _, line in sorted(keyed)]


def test_build_writes_exact_items_training_and_test_lines(tmp_path):
  out = tmp_path / "out"
  stats = _build(out)
  assert written_lines(out / "items.tsv") == ITEMS
  assert written_lines(out / "test.tsv") == TEST
  assert written_lines(out / "train.tsv") == _train_lines()
  assert {k: stats[k] for k in (
      "entries", "metadata_headwords_skipped", "items", "alias_entries",
      "alias_entries_unresolved", "items_with_alias_headers", "items_with_categories",
      "training_points", "dropped_training_points", "test_queries", "shared_definitions",
      "items_with_shared_definition", "largest_group")} == {
      "entries": 10, "metadata_headwords_skipped": 1, "items": 8, "alias_entries": 2,
      "alias_entries_unresolved": 1, "items_with_alias_headers": 1, "items_with_categories": 5,
      "training_points": 21, "dropped_training_points": 1, "test_queries": 7,
      "shared_definitions": 1, "items_with_shared_definition": 2, "largest_group": 2}
  assert stats["largest_group_definition"] == "A frame language."
  assert [f["file"] for f in stats["inputs"]] == ["foldoc.index", "foldoc.dict"]
  # No test query is a training text, not even up to case.
  queries = {line.split("\t")[0].casefold() for line in TEST}
  assert not queries & {line.split("\t")[0].casefold() for line in written_lines(out / "train.tsv")}


def test_dictzip_and_plain_dictionaries_give_byte_identical_files(tmp_path):
  packed = tmp_path / "dz"
  packed.mkdir()
  shutil.copy(os.path.join(FIXTURES, "foldoc.index"), packed)
  with open(os.path.join(FIXTURES, "foldoc.dict"), "rb") as f:
    (packed / "foldoc.dict.dz").write_bytes(gzip.compress(f.read(), mtime=0))
  _build(tmp_path / "a")
  _build(tmp_path / "b", packed)
  for name in OUTPUTS[:-1]:  # stats.json names the input files, which differ.
    assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name


def test_query_logs_and_xc_files_read_back(tmp_path):
  out = tmp_path / "out"
  stats = _build(out)
  K = stats["items"]
  train_ids = [int(line.split("\t")[1]) for line in _train_lines()]
  train = QueryLog(str(out / "train.tsv"), TextFeaturizer(), K)
  np.testing.assert_array_equal(train.label_counts(), np.bincount(train_ids, minlength=K))
  xc_train, xc_test = read_xc(str(out / "train.txt.gz")), read_xc(str(out / "test.txt.gz"))
  assert (xc_train.num_points, xc_test.num_points, xc_test.num_labels) == (21, 7, K)
  assert xc_train.Y.indices.tolist() == train_ids
  assert [xc_test.Y[i].indices.tolist() for i in range(7)] == [
      [int(i) for i in line.split("\t")[1].split(",")] for line in TEST]


def test_dictd_numbers_decode():
  # foldoc.index of dict-foldoc 20230119-1: "algorithm<TAB>tF5<TAB>LC", an entry of 706
  # bytes at 184,697 (t = 45, F = 5, 5 = 57; L = 11, C = 2).
  assert foldoc.decode_number("tF5") == 45 * 64 * 64 + 5 * 64 + 57 == 184_697
  assert foldoc.decode_number("LC") == 706 and foldoc.decode_number("A") == 0
  with pytest.raises(ValueError, match="'-' is not a dictd base64 digit"):
    foldoc.decode_number("A-")


def test_parse_entry_takes_headers_senses_categories_and_drops_dates():
  e = foldoc.parse_entry("hash\n#\n\n   1. <character> x.\n\n   <programming> 2. y\n   z.\n\n"
                         "   (1995-03-06)\n\n", 7)
  assert e.headers == ("hash", "#") and e.title == "hash" and e.offset == 7
  assert e.categories == ("character", "programming")
  assert e.paragraphs == ("x.", "y z.")
  assert foldoc.clean("A {brute force} search {(http://a.b/c)} at ftp://x.y/z.") == (
      "A brute force search at")
  assert foldoc.split_definition("A B. C d. E") == ("A B.", "C d. E")
  assert foldoc.split_definition("e.g. not split. x") == ("e.g. not split. x", "")


def _index_with(tmp_path, line):
  folder = tmp_path / "dict"
  folder.mkdir()
  shutil.copy(os.path.join(FIXTURES, "foldoc.dict"), folder)
  text = open(os.path.join(FIXTURES, "foldoc.index"), encoding="utf-8").read()
  (folder / "foldoc.index").write_text(text + line, encoding="utf-8")
  return folder, len(text.splitlines()) + 1


@pytest.mark.parametrize("line,message", [
    ("zz\tA\n", r"expected headword<TAB>offset<TAB>length, got 2 field"),
    ("zz\tA\tB!\n", r"'!' is not a dictd base64 digit"),
    ("zz\tA\t\n", r"empty number"),
])
def test_malformed_index_line_names_file_and_line(tmp_path, line, message):
  folder, lineno = _index_with(tmp_path, line)
  with pytest.raises(foldoc.DictFormatError, match=rf"foldoc.index:{lineno}: {message}"):
    _build(tmp_path / "out", folder)
  assert not os.path.exists(tmp_path / "out")


def test_entry_past_the_end_or_not_utf8_is_refused(tmp_path):
  folder, lineno = _index_with(tmp_path, "zz\tBAAA\tB\n")  # Offset 262,144 > 2,857 bytes.
  with pytest.raises(foldoc.DictFormatError,
                     match=rf"foldoc.index:{lineno}: 'zz' points past the end of .*foldoc.dict"):
    _build(tmp_path / "out", folder)
  data = open(os.path.join(FIXTURES, "foldoc.dict"), "rb").read()
  (folder / "foldoc.dict").write_bytes(data.replace(b"NISO\n", b"N\xffSO\n", 1))
  (folder / "foldoc.index").write_text(
      open(os.path.join(FIXTURES, "foldoc.index"), encoding="utf-8").read(), encoding="utf-8")
  with pytest.raises(foldoc.DictFormatError, match=r"the entry of 'niso' .* is not UTF-8"):
    _build(tmp_path / "out", folder)


def test_missing_files_name_the_apt_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"foldoc.index: not found.*apt-get install "
                     r"dict-foldoc"):
    _build(tmp_path / "out", tmp_path)
  shutil.copy(os.path.join(FIXTURES, "foldoc.index"), tmp_path)
  with pytest.raises(FileNotFoundError, match=r"foldoc.dict.dz or .*foldoc.dict: not found"):
    _build(tmp_path / "out", tmp_path)


@pytest.mark.skipif(not os.path.exists(os.path.join(foldoc.DICT_DIR, "foldoc.index")),
                    reason="Debian's dict-foldoc is not installed (apt-get install dict-foldoc)")
def test_real_foldoc(tmp_path):
  out = tmp_path / "out"
  stats = foldoc.build(str(out), xc=False)  # About 1 s.
  K = stats["items"]
  assert K > 10_000 and stats["training_points"] > 2 * K
  assert stats["alias_entries"] + K + stats["entries_without_text"] == stats["entries"]
  # Every item is the answer to exactly one query.
  assert sorted(query_log_ids(out / "test.tsv")) == list(range(K))
  assert stats["largest_group"] < 50  # No split artefact ("1.") groups hundreds of items.
  assert len(written_lines(out / "items.tsv")) == K


def test_mutated_dictionaries_build_or_are_refused_naming_the_file(tmp_path):
  """Byte-level mutations of the fixture's index and dictionary (experiments.bench.fuzz's):
  each build either succeeds with a consistent set or raises DictFormatError naming the
  index (with its line) or the dictionary; never another exception."""
  from hypothesis import HealthCheck, given, settings, strategies as st

  from experiments.bench.fuzz import mutate

  with open(os.path.join(FIXTURES, "foldoc.index"), "rb") as f:
    index = f.read()
  with open(os.path.join(FIXTURES, "foldoc.dict"), "rb") as f:
    dictionary = f.read()
  outcomes = []

  @settings(max_examples=150, derandomize=True, deadline=None,
            suppress_health_check=list(HealthCheck))
  @given(st.data())
  def case(data):
    folder = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "foldoc.index").write_bytes(mutate(data.draw, st, index))
    packed = data.draw(st.booleans())
    raw = mutate(data.draw, st, dictionary)
    (folder / ("foldoc.dict.dz" if packed else "foldoc.dict")).write_bytes(
        gzip.compress(raw, mtime=0)[:data.draw(st.sampled_from([None, 30]))] if packed
        else raw)
    try:
      stats = foldoc.build(str(folder / "out"), str(folder), xc=False)
    except foldoc.DictFormatError as e:
      assert str(e).startswith((f"{folder / 'foldoc.index'}:", f"{folder / 'foldoc.dict'}")), e
      outcomes.append("refused")
      return
    K = stats["items"]
    assert sorted(query_log_ids(folder / "out" / "test.tsv")) == list(range(K))
    assert all(0 <= int(line.rsplit("\t", 1)[1]) < K
               for line in written_lines(folder / "out" / "train.tsv"))
    outcomes.append("built")

  case()
  assert {"built", "refused"} <= set(outcomes)  # Both kinds of case were drawn.
