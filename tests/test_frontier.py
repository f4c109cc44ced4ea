"""The frontier: mach-jax points in experiments.bench.peers (--point) and their plot/table."""

import csv
import os
import subprocess
import sys

import pytest

from experiments.bench import frontier, peers
from tests.helpers import shared_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_point_names_a_system_and_its_changes():
  assert peers.parse_point("in16k: model.input_dim=16384 model.R=4") == (
      "mach@in16k", ["model.input_dim=16384", "model.R=4"])
  for bad in ("in16k model.input_dim=16384", ": model.R=4", "a b: model.R=4", "in16k:",
              "in16k: model.R"):
    with pytest.raises(SystemExit):
      peers.parse_point(bad)


def test_the_default_systems_skip_mach_text_only_where_there_is_no_text():
  # The default command (no --systems) runs every system; mach_text needs a set's query
  # logs, which only the sets the repository builds have. Named, it is never dropped.
  everything = list(peers.SYSTEMS) + ["mach_text@x"]
  assert "mach_text" not in peers.set_systems(everything, "bibtex", default=True)
  assert "mach_text@x" in peers.set_systems(everything, "bibtex", default=True)
  for name in peers.BUILT:
    assert peers.set_systems(everything, name, default=True) == everything
  assert peers.set_systems(everything, "bibtex", default=False) == everything


def _row(system, p1, mb, s, params=0):
  return {"dataset": "x", "system": system, "P@1": p1, "P@5": p1 / 2, "train_s": s,
          "model_mb": mb, "peak_rss_mb": 100.0, "num_params": params, "changes": ""}


def test_the_frontier_marks_only_undominated_systems():
  rows = [_row("mach", 0.90, 1000, 300, 310_000_000), _row("mach@small", 0.88, 100, 200, 30),
          _row("pecos", 0.89, 50, 20), _row("full_softmax", 0.87, 170, 400, 43)]
  marks = {r["system"]: [not frontier.dominated(r, rows, c) for c in ("model_mb", "train_s")]
           for r in rows}
  assert marks == {"mach": [True, True], "mach@small": [False, False],
                   "pecos": [True, True], "full_softmax": [False, False]}
  md = frontier.table("x", rows)
  assert md.index("| pecos |") < md.index("| mach@small |") < md.index("| mach |")
  assert "| mach | 0.9000 | 0.4500 | 1000 | 300 | 310.0M | 100 | yes / yes |" in md


def test_points_run_side_by_side_and_are_plotted(tmp_path):
  shared_file("bibtex", "train")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = tmp_path / "run"
  run = subprocess.run(
      [sys.executable, "-m", "experiments.bench.peers", "--datasets", "bibtex", "--systems", "",
       "--point", "in256: model.input_dim=256 train.num_epochs=1",
       "--point", "shared: model.shared_input=True train.num_epochs=1", "--out", str(out)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = {r["system"]: r for r in csv.DictReader(open(out / "results.csv"))}
  assert set(rows) == {"mach@in256", "mach@shared"}
  # bibtex: R = 16, H = 512, B = 32, D = 1,836; the counts were checked against the formula.
  assert rows["mach@in256"]["params_formula"] == "16x(256·512·32)"
  assert int(rows["mach@shared"]["num_params"]) == 1836 * 512 + 512 + 16 * (512 * 32 + 32)
  assert rows["mach@shared"]["changes"] == "model.shared_input=True train.num_epochs=1"
  frontier.main(["--out", str(out)])
  assert (out / "frontier_bibtex.png").stat().st_size > 10_000
  assert "| mach@shared |" in (out / "frontier.md").read_text()
