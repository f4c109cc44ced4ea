"""experiments.bench.paired: per-point comparison of the systems of one side-by-side run."""

import gzip
import os

import numpy as np
import pytest
import scipy.sparse as sp

from experiments.bench import paired


def test_hits_marks_the_predicted_ids_that_are_labels():
  Y = sp.csr_matrix(np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]]))
  preds = np.array([[2, 1], [0, -1], [1, 0]])
  np.testing.assert_array_equal(paired.hits(preds, Y),
                                [[True, False], [False, False], [True, False]])
  with pytest.raises(ValueError, match="2 predictions for 3 test points"):
    paired.hits(preds[:2], Y)


def test_compare_counts_the_points_only_one_system_got_right():
  # 10 points; a right at 1 on points 0-5, the reference on 3-7: a alone on 0-2, ref on 6-7.
  a = np.zeros((10, 5), bool)
  ref = np.zeros((10, 5), bool)
  a[:6, 0] = True
  ref[3:8, 0] = True
  a[:, 1] = True  # a's second guess is always right: P@5 differs by 1/5.
  r = paired.compare(a, ref)
  assert (r["only_a"], r["only_ref"]) == (3, 2)
  assert r["P@1"] == pytest.approx(0.6) and r["P@1_diff"] == pytest.approx(0.1)
  assert r["P@1_diff_lo"] < 0.1 < r["P@1_diff_hi"]
  assert r["sign_p"] == pytest.approx(1.0)  # 3 against 2: no evidence either way.
  assert r["P@5_diff"] == pytest.approx(0.2 + 0.1 / 5)
  same = paired.compare(ref, ref)
  assert same["sign_p"] == 1.0 and same["P@1_diff"] == 0.0


def test_a_lopsided_split_has_a_small_p_value():
  a = np.zeros((100, 5), bool)
  ref = np.zeros((100, 5), bool)
  a[:30, 0] = True  # a alone right on 30 points, the reference alone on none.
  assert paired.compare(a, ref)["sign_p"] < 1e-8


def test_main_reads_a_peers_run(tmp_path, capsys):
  data = tmp_path / "data" / "toy"
  data.mkdir(parents=True)
  for split, lines in (("train", ["0 0:1"]), ("test", ["0,2 0:1", "1 0:1", "2 0:1"])):
    with gzip.open(data / f"{split}.txt.gz", "wt") as f:
      f.write(f"{len(lines)} 1 3\n" + "\n".join(lines) + "\n")
  for system, top in (("mach_text", [[0, 1], [1, 0], [0, 1]]), ("pecos", [[2, 0], [0, 1], [2, 0]])):
    os.makedirs(tmp_path / "out" / "toy" / system)
    np.save(tmp_path / "out" / "toy" / system / "preds.npy", np.array(top))
  rows = paired.main(["--out", str(tmp_path / "out"), "--dataset", "toy",
                      "--data_root", str(tmp_path / "data")])
  assert rows["mach_text"]["P@1"] == pytest.approx(2 / 3)
  assert rows["pecos"]["P@1"] == pytest.approx(2 / 3)
  assert (rows["pecos"]["only_a"], rows["pecos"]["only_ref"]) == (1, 1)
  assert "| pecos | 0.6667 |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="predictions of"):
    paired.main(["--out", str(tmp_path / "out"), "--dataset", "toy", "--reference", "omikuji",
                 "--data_root", str(tmp_path / "data")])
