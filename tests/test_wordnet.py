"""The WordNet taxonomy set builder: parsing, transitive ancestors, split, XC output."""

import json
import os

import numpy as np
import pytest

from experiments.datasets import wordnet
from mach_jax.data.xc import read_xc

# Lines in the real data.noun / data.verb format (offsets shortened, glosses real). The
# licence header lines start with two spaces. Tree (nouns):
#   entity <- physical_entity <- object <- whole <- artifact
#   entity <- abstraction;  Hegira --@i--> abstraction (an instance hypernym)
#   artifact <- sword.  artifact, Hegira and sword fall in the test split, so the labels
#   'whole', 'artifact' and 'abstraction' occur only in test.
NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00000001 03 n 01 entity 0 002 ~ 00000002 n 0000 ~ 00000006 n 0000 | that which is perceived or known or inferred to have its own distinct existence
00000002 03 n 01 physical_entity 0 002 @ 00000001 n 0000 ~ 00000003 n 0000 | an entity that has physical existence
00000003 03 n 02 object 0 physical_object 0 002 @ 00000002 n 0000 ~ 00000004 n 0000 | a tangible and visible entity
00000004 03 n 01 whole 0 002 @ 00000003 n 0000 ~ 00000015 n 0000 | an assemblage of parts that is regarded as a single entity
00000015 06 n 02 artifact 0 artefact 0 001 @ 00000004 n 0000 | a man-made object taken as a whole
00000006 03 n 02 abstraction 0 abstract_entity 0 002 @ 00000001 n 0000 + 00000007 v 0101 | a general concept formed by extracting common features
00000022 04 n 02 Hegira 1 Hejira 1 001 @i 00000006 n 0000 | the flight of Muhammad from Mecca to Medina in 622
00000026 06 n 01 sword 0 001 @ 00000015 n 0000 | a cutting or thrusting weapon that has a long metal blade
"""
VERB = """\
00000007 29 v 01 abstract 0 001 ! 00000009 v 0101 01 + 08 00 | consider abstractly or in general
00000009 29 v 01 sigh 0 001 @ 00000007 v 0000 02 + 02 00 + 08 00 | heave or utter a sigh; breathe deeply and heavily
"""


def _tiny(tmp_path, noun=NOUN, verb=VERB):
  (tmp_path / "data.noun").write_text(noun)
  (tmp_path / "data.verb").write_text(verb)
  return str(tmp_path)


def test_parses_lemmas_gloss_and_both_hypernym_pointers(tmp_path):
  synsets = {s.key: s for s in wordnet.read_wordnet(_tiny(tmp_path))}
  assert len(synsets) == 10
  assert synsets["n00000003"].lemmas == ("object", "physical_object")
  assert synsets["n00000003"].text == "object physical object a tangible and visible entity"
  assert synsets["n00000022"].hypernyms == ("n00000006",)  # '@i' counts.
  assert synsets["n00000006"].hypernyms == ("n00000001",)  # '+' (derivation) does not.
  assert synsets["v00000007"].hypernyms == ()  # '!' (antonym) does not.
  assert synsets["v00000009"].hypernyms == ("v00000007",)
  assert synsets["v00000009"].gloss == "heave or utter a sigh; breathe deeply and heavily"


def test_ancestors_are_transitive_and_exclude_the_synset(tmp_path):
  anc = wordnet.ancestors(wordnet.read_wordnet(_tiny(tmp_path)))
  assert anc["n00000026"] == {"n00000015", "n00000004", "n00000003", "n00000002", "n00000001"}
  assert anc["n00000022"] == {"n00000006", "n00000001"}
  assert anc["n00000001"] == frozenset()


def test_cycle_and_dangling_pointer_are_errors():
  S = wordnet.Synset
  with pytest.raises(ValueError, match="cycle"):
    wordnet.ancestors([S("n1", ("a",), "", ("n2",)), S("n2", ("b",), "", ("n1",))])
  with pytest.raises(ValueError, match="n9, which is not in the files"):
    wordnet.ancestors([S("n1", ("a",), "", ("n9",))])


def test_malformed_line_names_file_and_line(tmp_path):
  bad = NOUN.replace("00000004 03 n 01 whole 0 002", "00000004 03 n 01 whole 0 00x")
  with pytest.raises(wordnet.WordNetFormatError, match=r"data\.noun:6:"):
    wordnet.read_wordnet(_tiny(tmp_path, noun=bad))
  truncated = NOUN.replace("002 @ 00000003 n 0000 ~ 00000015 n 0000", "002 @ 00000003 n 0000")
  with pytest.raises(wordnet.WordNetFormatError, match=r"data\.noun:6: line ends inside"):
    wordnet.read_wordnet(_tiny(tmp_path, noun=truncated))


def test_missing_package_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
    wordnet.read_wordnet(str(tmp_path))


def test_build_writes_xc_files_with_train_label_space(tmp_path):
  out = tmp_path / "out"
  wordnet.main(["--out", str(out), "--wordnet_dir", _tiny(tmp_path), "--min_df", "1"])
  stats = json.loads((out / "stats.json").read_text())
  synsets = wordnet.read_wordnet(str(tmp_path))
  test_keys = [s.key for s in synsets if wordnet.is_test(s.key)]
  train_keys = [s.key for s in synsets if not wordnet.is_test(s.key)]
  assert stats["train_points"] == len(train_keys) and stats["test_points"] == len(test_keys)
  assert test_keys == ["n00000015", "n00000022", "n00000026"]
  assert stats["synsets"] == 10 and stats["nouns"] == 8 and stats["verbs"] == 2
  train, test = read_xc(str(out / "train.txt.gz")), read_xc(str(out / "test.txt.gz"))
  assert (train.num_points, test.num_points) == (7, 3)
  assert train.num_features == test.num_features == stats["features"]
  labels = [l.split("\t")[1] for l in (out / "labels.tsv").read_text().splitlines()]
  assert labels == sorted(labels) and len(labels) == train.num_labels == stats["labels"]
  anc = wordnet.ancestors(synsets)
  # Every train point carries exactly its ancestors; test points those seen in train.
  for Y, keys, in_train in ((train.Y, train_keys, True), (test.Y, test_keys, False)):
    for i, key in enumerate(keys):
      got = {labels[j] for j in Y.indices[Y.indptr[i]:Y.indptr[i + 1]]}
      assert got == (anc[key] if in_train else anc[key] & set(labels))
  dropped = [k for key in test_keys for k in anc[key] if k not in labels]
  assert stats["test_label_occurrences_dropped"] == len(dropped)
  assert stats["test_only_labels_dropped"] == len(set(dropped)) == 3
  assert stats["test_label_occurrences_dropped"] == 4  # artifact 1, sword 2, Hegira 1.
  np.testing.assert_allclose(np.sqrt(train.X.multiply(train.X).sum(axis=1)).A1[
      np.diff(train.X.indptr) > 0], 1.0, rtol=1e-5)  # L2-normalised tf-idf rows.
  # The same task as text: one line per point, same order, same labels.
  by_key = {s.key: s for s in synsets}
  for name, data, keys in (("train.tsv", train, train_keys), ("test.tsv", test, test_keys)):
    lines = (out / name).read_text(encoding="utf-8").splitlines()
    assert len(lines) == data.num_points
    for i, (line, key) in enumerate(zip(lines, keys)):
      text, ids = line.split("\t")
      assert text == " ".join(by_key[key].text.split())
      want = data.Y.indices[data.Y.indptr[i]:data.Y.indptr[i + 1]].tolist()
      assert sorted(map(int, filter(None, ids.split(",")))) == sorted(want)
  from mach_jax.data.query_log import QueryLog
  from mach_jax.data.text import TextFeaturizer
  log = QueryLog(str(out / "train.tsv"), TextFeaturizer(num_features=256), len(labels))
  assert log.num_points == train.num_points
  np.testing.assert_array_equal(log.label_counts(), np.bincount(train.Y.indices,
                                                                minlength=len(labels)))


def test_split_is_a_fixed_fifth_of_the_synsets():
  keys = [f"n{i:08d}" for i in range(0, 5_000_000, 97)]
  frac = np.mean([wordnet.is_test(k) for k in keys])
  assert 0.19 < frac < 0.21
  assert wordnet.is_test("n00000001") == wordnet.is_test("n00000001")


@pytest.mark.skipif(not os.path.exists(os.path.join(wordnet.WORDNET_DIR, "data.noun")),
                    reason="Debian's wordnet-base is not installed")
def test_real_wordnet_counts():
  synsets = wordnet.read_wordnet()
  assert len(synsets) == 95_882
  assert sum(s.key[0] == "n" for s in synsets) == 82_115
  anc = wordnet.ancestors(synsets)
  assert len(set().union(*anc.values())) == 20_472
  assert 7.5 < np.mean([len(a) for a in anc.values()]) < 8.5
