"""The ablation harness: a resumable grid of overrides, and its plots."""

import json
import os

import pytest

from experiments import plots, sweep
from tests.helpers import tiny_config


def test_sweep_runs_each_point_once_and_plots(tmp_path):
  c = tiny_config()
  c.train.num_epochs = 1
  c.eval.update(every_epochs=0, estimators=("mean", "log_mean"))
  points = [{"model.R": 1, "model.B": 16}, {"model.R": 2, "model.B": 16},
            {"model.hash_family": "identity"}]
  out = str(tmp_path / "sweep")
  first = sweep.run_sweep(c, points, out)
  assert len(first) == 3
  again = sweep.run_sweep(c, points, out)  # Resumable: finished points are skipped.
  assert again == []
  with open(os.path.join(out, "results.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["overrides"] for r in records] == points
  assert [r["hash_spec"]["R"] for r in records] == [1, 2, 1]
  assert records[2]["hash_spec"]["B"] == 400  # identity: the full softmax over K = 400.
  assert set(records[0]["by_estimator"]) == {"mean", "log_mean"}
  peers = tmp_path / "peers.csv"
  peers.write_text("dataset,system,P@1,num_params,model_mb\nx,omikuji,0.3,,1.0\n"
                   "x,other,0.4,5000,\nx,mach,0.5,6000,\ny,pecos,0.2,,2.0\n")
  assert plots.peer_points(str(peers), "x") == [("omikuji", 2**18, 0.3), ("other", 5000, 0.4)]
  with pytest.raises(ValueError, match="no rows for dataset 'z'"):
    plots.peer_points(str(peers), "z")
  paths = plots.plot(out, peers=str(peers), dataset="x")
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  rows = open(plots.summary(out)).read().splitlines()
  assert len(rows) == 2 + 3 and rows[2].startswith("| R=1, B=16 |")
  p1 = records[0]["by_estimator"]["log_mean"]["P@1"]
  assert f"{p1:.3f} / " in rows[2].split("|")[-2]


def test_unknown_sweep_field_is_an_error():
  with pytest.raises(sweep.SweepError, match="model.Rr"):
    sweep.apply(tiny_config(), {"model.Rr": 3})
  with pytest.raises(sweep.SweepError, match="modle.R"):
    sweep.apply(tiny_config(), {"modle.R": 3})
  with pytest.raises(sweep.SweepError, match="model.R.x"):
    sweep.apply(tiny_config(), {"model.R.x": 3})


def test_every_point_is_checked_before_the_first_trains(tmp_path, monkeypatch):
  """A misspelt field or a setting out of range in the last point is refused at once,
  naming the point (before: after every point before it had trained)."""
  trained = []
  monkeypatch.setattr(sweep.train, "train_and_evaluate", lambda c, w: trained.append(w))
  for bad, message in (({"model.Rr": 3}, r"point 3 of 3, \{'model.Rr': 3\}: sweep field "
                                         r"'model.Rr' is not in the config"),
                       ({"model.B": -4}, r"point 3 of 3, \{'model.B': -4\}: config.model.B=-4: "
                                         r"expected an integer >= 2")):
    with pytest.raises(sweep.SweepError, match=message):
      sweep.run_sweep(tiny_config(), [{"model.R": 1}, {"model.R": 2}, bad], str(tmp_path))
  assert trained == []


def test_a_record_cut_short_by_a_kill_is_dropped_and_its_point_runs_again(tmp_path):
  path = tmp_path / "results.jsonl"
  path.write_text('{"id": "aaa", "overrides": {}}\n{"id": "bbb", "overr')
  assert sweep.done_points(str(path)) == {"aaa"}
  assert path.read_text() == '{"id": "aaa", "overrides": {}}\n'  # Appends start cleanly.
  path.write_text('{"id": "aaa"}\n\n{"id": "ccc"}\n')  # Blank lines are no records.
  assert sweep.done_points(str(path)) == {"aaa", "ccc"}
  path.write_text('{"id": "aaa"}\nnot json\n{"id": "ccc"}\n')
  with pytest.raises(sweep.SweepError, match=r"results.jsonl:2: not a record of this sweep"):
    sweep.done_points(str(path))


def test_the_table_counts_a_refit_runs_selection_and_refuses_a_run_without_test(tmp_path):
  from experiments import table
  e = {"P@1": .5, "P@3": .3, "P@5": .2, "nDCG@5": .6, "PSP@5": .1}
  r = {"config": {"model": {"R": 8, "B": 128, "hidden": [256], "loss": "bce"}},
       "estimator": "log_mean", "by_estimator": {"log_mean": e}, "train_seconds": 40.0,
       "refit": {"select_train_seconds": 60.0}, "examples_per_second": 900.0,
       "num_params": 2e6, "num_params_full_softmax": 3e6}
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "results.json").write_text(json.dumps(r))
  assert table.rows(str(tmp_path / "run"), []) == [
      "| run | R=8 B=128 H=256 bce | log_mean | 0.500 | 0.300 | 0.200 | 0.600 | 0.100 | 100 "
      "| 900 | 2.0M | 3.0M |"]
  del r["by_estimator"]
  (tmp_path / "run" / "results.json").write_text(json.dumps(r))
  with pytest.raises(SystemExit, match="read no test split"):
    table.rows(str(tmp_path / "run"), [])
