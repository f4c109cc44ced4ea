"""experiments.bench.grow: fine-tuning recipes chosen on validation, the test read once."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from experiments.bench import grow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(**kw):
  base = dict(new_repeat=1, other_fraction=1.0, finetune_epochs=1, variant=None)
  return argparse.Namespace(**{**base, **kw})


def test_a_variant_overrides_only_the_keys_it_names():
  v = grow._variants(_args(new_repeat=2, variant=["epochs=3,schedule=cosine",
                                                   "learning_rate=0.01"]))
  assert v[0] == {"new_repeat": 2, "other_fraction": 1.0, "epochs": 3,
                  "learning_rate": None, "schedule": "cosine"}  # None: the reference's rate.
  assert v[1]["epochs"] == 1 and v[1]["schedule"] == "constant"
  assert grow._tag({**v[0], "learning_rate": 3e-3}) == "finetuned_new2_ep3_lr0.003_cosine"
  assert grow._tag(v[1]) == "finetuned_new2_lr0.01"


@pytest.mark.parametrize("spec", ["epoch=2", "epochs", "epochs=", "new_repeat=3;epochs=2"])
def test_a_bad_variant_names_the_flag_and_the_keys(spec):
  with pytest.raises(SystemExit, match=r"--variant .*new_repeat"):
    grow._variants(_args(variant=[spec]))


def _scored(name, time, worst):
  ratios = {"new P@1": worst, "new R@10": 1.0, "old P@1": 1.0, "old R@10": 1.0, "time": time}
  ratios["met"] = worst >= 0.9 and time <= 0.2
  return {"run": name, "ratios": ratios}


def test_the_choice_is_the_recipe_furthest_inside_the_goal():
  # Margins: 1.03 (time), 1.07 (accuracy), 0.89 (accuracy).
  scored = [_scored("slow", 0.195, 0.95), _scored("fast", 0.10, 0.96),
            _scored("fastest_short", 0.05, 0.80)]
  assert grow._choose(scored)["run"] == "fast"


def test_without_a_recipe_that_meets_it_the_nearest_to_the_goal():
  # Margins: 0.67 (time), 0.94 (accuracy), 0.91 (time).
  scored = [_scored("twice_the_time", 0.30, 0.99), _scored("a", 0.15, 0.85),
            _scored("b", 0.22, 0.98)]
  assert grow._choose(scored)["run"] == "a"


def test_a_tiny_growth_run_reads_validation_in_every_run_and_reports_the_choice(tmp_path):
  out = tmp_path / "grow"
  cmd = [sys.executable, "-m", "experiments.bench.grow", "--out", str(out),
         "--classes", "600", "--features", "512", "--train", "4000", "--test", "400",
         "--R", "2", "--B", "32", "--epochs", "1", "--scratch_learning_rates", "1e-3,3e-3",
         "--variant", "new_repeat=2,other_fraction=0.5", "--variant", "schedule=cosine"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One CPU device.
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "grow.json").read_text())
  runs = [v["run"] for v in report["variants"]]
  lr = report["reference"].removeprefix("scratch_lr")
  assert lr in ("0.001", "0.003")
  assert runs == [f"finetuned_new2_other0.5_lr{lr}", f"finetuned_lr{lr}_cosine"]
  assert report["chosen"] in runs
  points = report["points"]
  assert points["validation"] + points["all"] == 4000 and points["validation"] > 0
  # Every training run's own evaluation read the validation file, never the test queries.
  assert set(report["references"]) == {"scratch_lr0.001", "scratch_lr0.003"}
  assert report["reference"] in report["references"]
  for run in [f"old_model_lr{lr}", "scratch_lr0.001", "scratch_lr0.003",
              *[os.path.join(f"from_lr{lr}", r) for r in runs]]:
    config = json.loads((out / run / "results.json").read_text())["config"]
    assert os.path.basename(config["data"]["test"]).startswith("val")
  assert not (out / "test.txt").exists()
  other = subprocess.run(cmd[:-4] + ["--seed", "1"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
  assert other.returncode != 0 and "shape.json" in other.stderr  # Stale files are refused.
  assert set(report["rows"]) == {"widened, no training", f"fine-tuned ({report['chosen']})",
                                 f"from scratch ({report['reference']})"}
