"""experiments.datasets.query_xc: a query-log set as XC files of the config's own features,
and the peers bench running mach_text points on such a set."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import products
from experiments.datasets.query_xc import build
from mach_jax import data as data_lib
from mach_jax.data.query_log import QueryLogError
from mach_jax.data.xc import read_xc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("apple banana cherry grape lemon mango olive peach pear plum quince raspberry "
         "tomato walnut yam zucchini").split()


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines))


def _source(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  _write(src / "products.tsv", [f"{i}\t{w} box" for i, w in enumerate(WORDS)])
  train = [f"{w} {k}\t{i}" for k in range(12) for i, w in enumerate(WORDS)]
  _write(src / "train.tsv", train)
  _write(src / "test.tsv", [f"a {w}\t{i}" for i, w in enumerate(WORDS)])
  return src, train


def test_writes_every_nth_training_line_with_the_configs_features(tmp_path):
  src, train = _source(tmp_path)
  out = tmp_path / "out"
  stats = build(str(src), str(out), "products", train_every=5)
  kept = train[::5]
  assert (out / "train.tsv").read_text() == "".join(line + "\n" for line in kept)
  assert (out / "test.tsv").read_text() == (src / "test.tsv").read_text()
  assert (out / "items.tsv").read_text() == (src / "products.tsv").read_text()
  featurizer = data_lib.featurizer(products.get_config().data)
  for part, lines in (("train", kept), ("test", (src / "test.tsv").read_text().splitlines())):
    xc = read_xc(str(out / f"{part}.txt.gz"))
    want = featurizer.transform([line.split("\t")[0] for line in lines])
    assert xc.X.shape == (len(lines), featurizer.num_features)
    np.testing.assert_allclose(xc.X.toarray(), want.toarray(), rtol=1e-5)
    assert xc.Y.shape[1] == len(WORDS)
    assert [int(xc.Y[i].indices[0]) for i in range(len(lines))] == [
        int(line.split("\t")[1]) for line in lines]
  assert stats == json.loads((out / "stats.json").read_text())
  assert stats["train"]["lines"] == len(kept) and stats["test"]["lines"] == len(WORDS)
  assert stats["num_labels"] == len(WORDS) and stats["train_every"] == 5


def test_a_bad_id_names_the_file_and_line(tmp_path):
  src, _ = _source(tmp_path)
  _write(src / "test.tsv", ["a apple\t0", "a pear\t99"])
  with pytest.raises(QueryLogError, match=r"test.tsv:2: product id 99 is outside \[0, 16\)"):
    build(str(src), str(tmp_path / "out"), "products", train_every=1)
  with pytest.raises(ValueError, match="--train_every=0"):
    build(str(src), str(tmp_path / "out"), "products", train_every=0)


def test_the_peers_bench_runs_mach_text_points_on_a_written_set(tmp_path):
  src, _ = _source(tmp_path)
  build(str(src), str(tmp_path / "fruit"), "products", train_every=1)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
      [sys.executable, "-m", "experiments.bench.peers", "--datasets", "fruit",
       "--systems", "mach_text", "--data_root", str(tmp_path), "--text_epochs", "3",
       "--text_config", "text", "--text_point", "r2: model.R=2",
       "--text_set", "data.featurizer.num_features=4096", "--text_set", "model.hidden=(32,)",
       "--out", str(tmp_path / "bench")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = list(csv.DictReader(open(tmp_path / "bench" / "results.csv")))
  assert [r["system"] for r in rows] == ["mach_text", "mach_text@r2"]
  small = "data.featurizer.num_features=4096 model.hidden=(32,)"  # --text_set: both systems'.
  assert [r["changes"] for r in rows] == [small, f"{small} model.R=2"]
  assert rows[1]["params_formula"].startswith("2x(4096·32·")
  assert not rows[0]["params_formula"].startswith("2x(")
  md = open(tmp_path / "bench" / "results.md").read()
  assert "mach_text@r2: experiments/configs/text with model.R=2" in md
  assert f"mach_text and its points: with {small}" in md
