"""The Debian package search set builder: apt lists in, items / query logs / XC files out."""

import filecmp
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from experiments.datasets import debian
from mach_jax.data.query_log import QueryLog
from mach_jax.data.text import TextFeaturizer
from mach_jax.data.xc import read_xc
from tests.helpers import query_log_ids, written_lines

# Real stanzas of bookworm's main/binary-amd64 Packages and Translation-en (0ad's Depends
# shortened), plus a stale 0ad translation under another Description-md5 and a
# bookworm-updates list, neither of which may be read. They cover: a multi-line Tag (0ad,
# bzr-builddeb, freeglut3-dev, linux-doc), two packages with the same synopsis (bzr-builddeb,
# myspell-bg), one without a long description (freeglut3-dev), one whose first paragraph is
# its own synopsis (libghc-comonad-dev) and one whose paragraph is another's synopsis
# (libghc-comonad-doc), and a name listed at two versions (linux-doc).
FIXTURES = os.path.join(os.path.dirname(__file__), "data", "debian")
PACKAGES = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
TRANSLATION = "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en"

ITEMS = [
    "0\t0ad\t0.0.26-3\tReal-time strategy game of ancient warfare",
    "1\tbzr-builddeb\t2.8.12+brz\ttransitional dummy package",
    "2\tfreeglut3-dev\t3.4.0-1\tTranisitonal package",
    "3\tlibghc-comonad-dev\t5.0.8-1+b2\tHaskell 98 comonads",
    "4\tlibghc-comonad-doc\t5.0.8-1\tHaskell 98 comonads; documentation",
    "5\tlinux-doc\t6.1.176-1\tLinux kernel specific documentation (meta-package)",
    "6\tmyspell-bg\t4.1-7\ttransitional dummy package",
]
HASKELL = "See http://www.haskell.org/ for more information on Haskell."
# In the written order: sorted by crc32("<id>:<k>"), k = the text's index within its item
# (paragraphs first, the name point last; dropped texts keep their k).
TRAIN = [
    "libghc comonad doc doc devel doc devel lang haskell role documentation\t4",
    "libghc comonad dev haskell\t3",
    "bzr builddeb vcs devel buildtools devel debian devel packaging devel rcs implemented in "
    "python interface commandline role plugin role program scope utility suite debian works "
    "with software source\t1",
    "This package provides the documentation for a library for the Haskell programming "
    f"language. {HASKELL}\t4",
    "linux doc doc admin kernel devel doc devel lang c devel library implemented in c role "
    "devel lib role documentation role metapackage\t5",
    "myspell bg oldlibs role shared lib\t6",
    f"This package provides a library for the Haskell programming language. {HASKELL}\t3",
    "It can be safely removed after an upgrade.\t1",
    "0 ad games game strategy interface graphical interface x 11 role program uitoolkit sdl "
    "uitoolkit wxwidgets use gameplaying x 11 application\t0",
    '0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform real-time '
    "strategy (RTS) game of ancient warfare. In short, it is a historically-based war/economy "
    "game that allows players to relive or rewrite the history of Western civilizations, "
    "focusing on the years between 500 B.C. and 500 A.D. The project is highly ambitious, "
    "involving state-of-the-art 3D graphics, detailed artwork, sound, and a flexible and "
    "powerful custom-built game engine.\t0",
    "This is a transitional package, replacing the Bazaar packaging with the Breezy "
    "packaging.\t1",
    "freeglut 3 dev libdevel devel library hardware opengl interface 3 d interface graphical "
    "interface x 11 role devel lib role program x 11 application x 11 library\t2",
    "This is a transitional dummy package to smooth transition to hunspell-bg. It can safely "
    "be removed.\t6",
    "This package depends on the package containing the documentation for the latest Linux "
    "kernel.\t5",
]
TEST = [
    "Real-time strategy game of ancient warfare\t0",
    "transitional dummy package\t1,6",
    "Tranisitonal package\t2",
    "Haskell 98 comonads\t3",
    "Haskell 98 comonads; documentation\t4",
    "Linux kernel specific documentation (meta-package)\t5",
]
OUTPUTS = ("items.tsv", "train.tsv", "test.tsv", "train.txt.gz", "test.txt.gz", "stats.json")


def _build(out, lists_dir=FIXTURES, *extra):
  debian.main(["--out", str(out), "--lists_dir", str(lists_dir), "--min_df", "1", *extra])
  with open(os.path.join(out, "stats.json"), encoding="utf-8") as f:
    return json.load(f)


def _copy_lists(tmp_path, packages=None, translation=None):
  """The fixture lists in tmp_path/lists, either text replaced when given."""
  lists = tmp_path / "lists"
  lists.mkdir()
  for name, text in ((PACKAGES, packages), (TRANSLATION, translation)):
    if text is None:
      shutil.copy(os.path.join(FIXTURES, name), lists / name)
    else:
      (lists / name).write_text(text, encoding="utf-8")
  return lists


def _fixture(name):
  with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
    return f.read()


def test_build_writes_exact_items_training_and_test_lines(tmp_path):
  out = tmp_path / "out"
  stats = _build(out)
  assert written_lines(out / "items.tsv") == ITEMS
  assert written_lines(out / "train.tsv") == TRAIN
  assert written_lines(out / "test.tsv") == TEST
  assert {k: stats[k] for k in (
      "items", "training_points", "training_paragraph_points", "training_name_points",
      "dropped_training_points", "items_without_long_description", "test_queries",
      "label_groups", "shared_synopses", "items_with_shared_synopsis", "largest_group",
      "package_stanzas_dropped_as_lower_versions", "truncated_training_points")} == {
      "items": 7, "training_points": 14, "training_paragraph_points": 7,
      "training_name_points": 7, "dropped_training_points": 2,
      "items_without_long_description": 1, "test_queries": 6, "label_groups": 6,
      "shared_synopses": 1, "items_with_shared_synopsis": 2, "largest_group": 2,
      "package_stanzas_dropped_as_lower_versions": 1, "truncated_training_points": 0}
  assert stats["largest_group_synopsis"] == "transitional dummy package"
  assert stats["mean_labels_per_test_query"] == pytest.approx(7 / 6)
  assert [f["file"] for f in stats["inputs"]] == [PACKAGES, TRANSLATION]
  assert stats["inputs"][0]["sha256"] == (
      "44ecb50601ad5a76dd2e80d5775ee382c87dde95ac6e5eccae38b3f5e897b72f")
  # No test query is a training text, not even up to case.
  synopses = {line.split("\t")[0].casefold() for line in TEST}
  assert not synopses & {line.split("\t")[0].casefold() for line in TRAIN}


def test_two_builds_are_byte_identical(tmp_path):
  _build(tmp_path / "a")
  _build(tmp_path / "b")
  for name in OUTPUTS:
    assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
  for name in ("train.txt.gz", "test.txt.gz"):  # No time of writing in the gzip header.
    with open(tmp_path / "a" / name, "rb") as f:
      assert f.read(8)[4:] == bytes(4)


def test_query_logs_and_xc_files_read_back(tmp_path):
  out = tmp_path / "out"
  stats = _build(out)
  K = stats["items"]
  train_ids = [int(line.split("\t")[1]) for line in TRAIN]
  featurizer = TextFeaturizer()
  train = QueryLog(str(out / "train.tsv"), featurizer, K)
  test = QueryLog(str(out / "test.tsv"), featurizer, K)
  assert (train.num_points, test.num_points) == (14, 6)
  np.testing.assert_array_equal(train.label_counts(), np.bincount(train_ids, minlength=K))
  np.testing.assert_array_equal(test.label_counts(), np.ones(K))
  assert test.max_labels == 2 and test.to_xc().Y[1].indices.tolist() == [1, 6]

  xc_train, xc_test = read_xc(str(out / "train.txt.gz")), read_xc(str(out / "test.txt.gz"))
  assert (xc_train.num_points, xc_train.num_labels) == (14, K)
  assert (xc_test.num_points, xc_test.num_labels) == (6, K)
  assert xc_train.num_features == xc_test.num_features == stats["xc"]["features"]
  assert stats["xc"]["features"] == stats["xc"]["word_features"] + stats["xc"]["char_features"]
  assert xc_train.Y.indices.tolist() == train_ids  # One label per training point, in order.
  assert [xc_test.Y[i].indices.tolist() for i in range(6)] == [[0], [1, 6], [2], [3], [4], [5]]
  for X in (xc_train.X, xc_test.X):
    norms = np.sqrt(X.multiply(X).sum(axis=1)).A1
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)  # L2-normalised rows.


def test_no_xc_skips_the_xc_files(tmp_path):
  stats = _build(tmp_path / "out", FIXTURES, "--no_xc")
  assert "xc" not in stats
  assert sorted(os.listdir(tmp_path / "out")) == ["items.tsv", "stats.json", "test.tsv",
                                                  "train.tsv"]


def test_max_features_keeps_the_most_frequent_ngrams(tmp_path):
  stats = _build(tmp_path / "out", FIXTURES, "--max_features", "50")
  assert stats["xc"]["word_features"] == stats["xc"]["char_features"] == 50
  assert read_xc(str(tmp_path / "out" / "train.txt.gz")).num_features == 100


@pytest.mark.skipif(not os.path.exists(debian.APT_HELPER), reason="apt is not installed")
def test_compressed_lists_read_through_apt_helper(tmp_path):
  lists = tmp_path / "lists"
  lists.mkdir()
  for name in (PACKAGES, TRANSLATION):
    with open(os.path.join(FIXTURES, name), "rb") as src, open(lists / name, "wb") as dst:
      shutil.copyfileobj(src, dst)
    subprocess.run(["gzip", "-n", str(lists / name)], check=True)
  _build(tmp_path / "out", lists, "--no_xc")
  assert written_lines(tmp_path / "out" / "train.tsv") == TRAIN


def test_reads_fields_multiline_tags_and_the_highest_version():
  packages, duplicates = debian.read_packages(os.path.join(FIXTURES, PACKAGES))
  by_name = {p.name: p for p in packages}
  assert [p.name for p in packages] == sorted(by_name) and duplicates == 1
  assert by_name["0ad"].tags == (
      "game::strategy", "interface::graphical", "interface::x11", "role::program",
      "uitoolkit::sdl", "uitoolkit::wxwidgets", "use::gameplaying", "x11::application")
  assert by_name["0ad"].section == "games"
  assert by_name["0ad"].md5 == "d943033bedada21853d2ae54a2578a7b"
  assert by_name["libghc-comonad-dev"].tags == ()
  assert by_name["linux-doc"].version == "6.1.176-1"
  # The highest version wins whichever comes first in the file.
  text = _fixture(PACKAGES)
  stanzas = text.strip("\n").split("\n\n")
  swapped = "\n\n".join(reversed(stanzas)) + "\n"
  packages, _ = debian.read_packages("Packages", swapped)
  assert {p.name: p.version for p in packages}["linux-doc"] == "6.1.176-1"


def test_translations_are_keyed_by_package_and_md5():
  tr = debian.read_translations(os.path.join(FIXTURES, TRANSLATION))
  assert len(tr) == 8
  assert "older description" in tr["0ad", "3f1e1c4bbd2b9c7e4e0c2b6d8c1c0f0a"]
  assert tr["freeglut3-dev", "0470f33a14d4f9331eaf57007349a79e"] == "Tranisitonal package"
  assert debian.paragraphs(tr["bzr-builddeb", "e4f3bebf5d29456b22501dc0c8a26386"]) == [
      "This is a transitional package, replacing the Bazaar packaging with the Breezy "
      "packaging.", "It can be safely removed after an upgrade."]


def test_paragraphs_split_at_dot_lines_only():
  description = ("synopsis\n first  line\n\tsecond line\n .\n  verbatim   line\n .cabal file,"
                 " not a separator\n .\n .\n last")
  assert debian.paragraphs(description) == [
      "first line second line", "verbatim line .cabal file, not a separator", "last"]
  assert debian.paragraphs("synopsis only") == []


def test_name_words_split_letters_digits_and_punctuation():
  assert debian.name_words("python3-numpy") == ["python", "3", "numpy"]
  assert debian.name_words("libstdc++6", "libs", "role::shared-lib") == [
      "libstdc", "6", "libs", "role", "shared", "lib"]
  assert debian.name_words("g++-12", "devel::lang:c++") == ["g", "12", "devel", "lang", "c"]


def test_long_texts_are_cut_at_a_space_below_the_reader_limit():
  assert debian.MAX_CHARS == TextFeaturizer().max_chars
  text = " ".join(["word"] * 3000)  # 14,999 characters.
  cut = debian.truncate(text)
  assert len(cut) <= debian.MAX_CHARS and text.startswith(cut) and cut.endswith("word")
  assert debian.truncate("x" * 20_000) == "x" * debian.MAX_CHARS
  assert debian.truncate("short text") == "short text"


VERSION_PAIRS = [  # (a, b, sign of a - b) by dpkg's rules.
    ("6.1.170-3", "6.1.176-1", -1), ("1.0~rc1", "1.0", -1), ("1.0", "1.0-1", -1),
    ("1:0.1", "2.0", 1), ("1.0a", "1.0+", -1), ("1.01", "1.1", 0), ("2.8.12+brz", "2.8.12", 1),
    ("1.0~~", "1.0~", -1), ("0.0.26-3", "0.0.26-3", 0), ("1.2.3-1+b2", "1.2.3-1", 1),
    ("1.0-1~bpo1", "1.0-1", -1), ("1.0-1", "1.0-1.1", -1), ("2:1.0", "10.0", 1),
    ("9", "10", -1), ("1.0.0", "1.0", 1), ("1.0a", "1.0", 1), ("1.0~", "1.0", -1),
]


def test_compare_versions_follows_dpkg():
  for a, b, sign in VERSION_PAIRS:
    assert np.sign(debian.compare_versions(a, b)) == sign, (a, b)
    assert np.sign(debian.compare_versions(b, a)) == -sign, (b, a)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed")
def test_compare_versions_agrees_with_dpkg_itself():
  for a, b, sign in VERSION_PAIRS:
    op = {-1: "lt", 0: "eq", 1: "gt"}[sign]
    assert subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0, (a, op, b)


def test_missing_list_names_the_file_and_the_apt_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"binary-amd64_Packages.*apt-get update -o "
                     r"Acquire::Languages=en"):
    _build(tmp_path / "out", tmp_path)
  # The -updates list is no stand-in for the suite's own.
  shutil.copy(os.path.join(FIXTURES, PACKAGES.replace("bookworm", "bookworm-updates")),
              tmp_path)
  with pytest.raises(FileNotFoundError, match=r"bookworm_main_binary-amd64_Packages"):
    _build(tmp_path / "out", tmp_path)
  shutil.copy(os.path.join(FIXTURES, PACKAGES), tmp_path)
  with pytest.raises(FileNotFoundError, match=r"i18n_Translation-en.*apt-get update"):
    _build(tmp_path / "out", tmp_path)
  assert not os.path.exists(tmp_path / "out")


def test_lists_from_two_mirrors_are_refused(tmp_path):
  lists = _copy_lists(tmp_path)
  shutil.copy(lists / PACKAGES, lists / PACKAGES.replace("deb.debian.org", "ftp.de.debian.org"))
  with pytest.raises(ValueError, match="several mirrors"):
    _build(tmp_path / "out", lists)


def _line_of(text, needle):
  return text.split("\n").index(needle) + 1


def test_malformed_stanza_names_file_and_line(tmp_path):
  text = _fixture(PACKAGES)
  bad = text.replace("Section: games\n", "Section games\n", 1)
  lists = _copy_lists(tmp_path, packages=bad)
  with pytest.raises(debian.ControlFormatError,
                     match=rf"{PACKAGES}:{_line_of(text, 'Section: games')}: expected 'Field"):
    _build(tmp_path / "out", lists)


def test_stanza_without_a_required_field_names_its_first_line(tmp_path):
  text = _fixture(TRANSLATION)
  bad = text.replace("Description-md5: 00ddef8fbf27444a48a36993f9c9d823\n", "")
  first = _line_of(text, "Package: linux-doc")
  lists = _copy_lists(tmp_path, translation=bad)
  with pytest.raises(debian.ControlFormatError,
                     match=rf"{TRANSLATION}:{first}: stanza 'linux-doc' has no Description-md5"):
    _build(tmp_path / "out", lists)
  stanza = "Package: a\nVersion: 1\nDescription: an a\nDescription-md5: 0\n"
  with pytest.raises(debian.ControlFormatError, match=r"Packages:6: continuation line"):
    debian.read_packages("Packages", stanza + "\n continued\n")
  with pytest.raises(debian.ControlFormatError, match=r"Packages:5: field 'Version' twice"):
    debian.read_packages("Packages", stanza + "Version: 2\n")
  with pytest.raises(debian.ControlFormatError, match=r"Packages: no package stanzas"):
    debian.read_packages("Packages", "\n\n")


def _fetched(list_name):
  """Whether apt has bookworm's list ``list_name`` under LISTS_DIR, in any compression."""
  stem = os.path.join(debian.LISTS_DIR, "deb.debian.org_debian_" + list_name.format(
      suite="bookworm"))
  return any(os.path.exists(stem + ext) for ext in ("", ".lz4", ".xz", ".gz", ".bz2", ".lzma",
                                                    ".zst"))


@pytest.mark.skipif(not (_fetched(debian.PACKAGES_LIST) and _fetched(debian.TRANSLATION_LIST)),
                    reason="bookworm's Packages and Translation-en lists are not both fetched "
                    "(apt-get update -o Acquire::Languages=en)")
def test_real_bookworm_lists(tmp_path):
  out = tmp_path / "out"
  stats = debian.build(str(out), xc=False)  # About 10 s on the 2-core dev VM.
  K = stats["items"]
  assert K > 50_000 and stats["training_points"] > 2 * K
  assert stats["items_without_translation"] < K // 100
  # Every item is the answer to exactly one query.
  assert sorted(query_log_ids(out / "test.tsv")) == list(range(K))
  assert len(written_lines(out / "items.tsv")) == K
  assert all(0 <= int(line.rsplit("\t", 1)[1]) < K and line.split("\t")[0]
             for line in written_lines(out / "train.tsv"))
