"""experiments.bench.peers runs mach-jax's default text config (system mach_text) on a set's
query logs and scores it against the set's XC test file, like every other system."""

import csv
import os
import subprocess
import sys

import numpy as np
import scipy.sparse as sp

from mach_jax.data.xc import write_xc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The text config with a smaller feature hash and layer: its 2^18 dimensions and H = 256 make
# an 800 MB state and checkpoint, too much for a 16-item set's test.
SMALL = ("--text_set", "data.featurizer.num_features=4096", "--text_set", "model.hidden=(32,)")
WORDS = ("apple banana cherry grape lemon mango olive peach pear plum quince raspberry "
         "tomato walnut yam zucchini").split()


def _tiny_set(folder, misaligned=False):
  """16 items; training text names each item's word three ways, a test query once."""
  os.makedirs(folder)
  K = len(WORDS)
  train = [(f"{w} {w}s", i) for i, w in enumerate(WORDS)] * 3 + [
      (f"fresh {w}", i) for i, w in enumerate(WORDS)]
  test = [(f"a {w}", i) for i, w in enumerate(WORDS)]
  for name, rows in (("train", train), ("test", test)):
    with open(os.path.join(folder, f"{name}.tsv"), "w") as f:
      f.writelines(f"{q}\t{i}\n" for q, i in rows)
    ids = [i for _, i in rows]
    if misaligned and name == "test":
      ids = ids[1:] + ids[:1]
    Y = sp.csr_matrix((np.ones(len(ids), np.float32), (np.arange(len(ids)), ids)),
                      shape=(len(ids), K))
    X = sp.csr_matrix(np.eye(len(ids), 4, dtype=np.float32) + 1.0)  # The peers' features.
    write_xc(os.path.join(folder, f"{name}.txt.gz"), X, Y)
  with open(os.path.join(folder, "items.tsv"), "w") as f:
    f.writelines(f"{i}\t{w}\n" for i, w in enumerate(WORDS))


def _bench(tmp_path, name, *extra, out=None):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run(
      [sys.executable, "-m", "experiments.bench.peers", "--datasets", name,
       "--systems", "mach_text", "--data_root", str(tmp_path), "--text_epochs", "3",
       *SMALL, "--out", str(out or tmp_path / f"out_{name}"), *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_mach_text_learns_a_tiny_text_set_and_refuses_misaligned_logs(tmp_path):
  _tiny_set(tmp_path / "fruit")
  out = _bench(tmp_path, "fruit")
  assert out.returncode == 0, out.stderr[-3000:]
  (row,) = list(csv.DictReader(open(tmp_path / "out_fruit" / "results.csv")))
  assert row["system"] == "mach_text" and float(row["P@1"]) >= 0.5
  assert int(row["num_params"]) > 0 and float(row["train_s"]) > 0
  # The batch's featurizing is timed within the batch's pass: a part of its time, shown.
  assert 0 < float(row["featurize_ms_per_query_batch"]) < float(row["predict_ms_per_query_batch"])
  assert "featurizing) /" in open(tmp_path / "out_fruit" / "results.md").read()
  # The folder's size with its table stored as int8, beside its own.
  assert 0 < float(row["model_mb_int8"]) and float(row["model_mb"]) > 0
  assert f"(int8 {float(row['model_mb_int8']):.1f})" in open(
      tmp_path / "out_fruit" / "results.md").read()

  # --predict_only: the saved model, loaded again, answers as it did when trained.
  again = _bench(tmp_path, "fruit", "--predict_only")
  assert again.returncode == 0, again.stderr[-3000:]
  table = open(tmp_path / "out_fruit" / "predict.md").read()
  assert f"| fruit | mach_text | {float(row['P@1']):.4f} |" in table
  assert table.rstrip().endswith("| 1.0000 |")
  empty = _bench(tmp_path, "fruit", "--predict_only", out=tmp_path / "nothing_here")
  assert empty.returncode != 0 and "holds no earlier run of mach_text" in empty.stderr

  _tiny_set(tmp_path / "shifted", misaligned=True)
  out = _bench(tmp_path, "shifted")
  assert out.returncode != 0
  assert "test.tsv: its lines are not" in out.stderr + out.stdout
