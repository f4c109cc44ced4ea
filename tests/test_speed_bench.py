"""The time-to-target benchmark's bookkeeping (the runs themselves are benchmarks, not tests)."""

import os

import pytest

from experiments.bench import peers, speed


def _row(system, repeat, t, **kw):
  return {"dataset": "bibtex", "system": system, "repeat": repeat, "target": 0.632,
          "reached": t is not None, "time_to_target_s": t, **kw}


def test_table_reports_medians_ratio_and_unreached_runs():
  profile = dict(startup_s=0.1, import_s=2.0, data_s=1.0, setup_s=0.5, compile_s=1.5,
                 steps_s=10.0, eval_s=3.0)
  rows = [_row("mach", 0, 30.0, **profile), _row("omikuji", 0, 2.0),
          _row("mach", 1, None), _row("omikuji", 1, 3.0),
          _row("mach", 2, 20.0, **profile), _row("omikuji", 2, 4.0)]
  line = speed.table(rows, 3).splitlines()[-1]
  cells = [c.strip() for c in line.split("|")[1:-1]]
  # Median of the runs that reached the target (30, 20 -> 25) over omikuji's (3).
  assert cells[:6] == ["bibtex", "0.632", "25.0", "3.0", "8.3", "2/3"]
  assert cells[6] == "0.1 / 2.0 / 1.0 / 0.5 / 1.5 / 10.0 / 3.0"
  rows = [_row("mach", 0, None), _row("omikuji", 0, 2.0)]
  cells = [c.strip() for c in speed.table(rows, 1).splitlines()[-1].split("|")[1:-1]]
  assert cells[2:6] == ["not reached", "2.0", "–", "0/1"]


def test_targets_default_and_override():
  assert speed.parse_targets("") == {"bibtex": 0.632, "delicious": 0.655}
  assert speed.parse_targets("bibtex=0.6,corel5k=0.3")["corel5k"] == 0.3
  with pytest.raises(SystemExit, match="expected name=value"):
    speed.parse_targets("bibtex")


def test_mach_only_rows_and_config_overrides():
  rows = [_row("mach", 0, 12.0)]
  md = speed.table(rows, 1, ["model.R=8"])
  assert "mach-jax config with model.R=8" in md
  cells = [c.strip() for c in md.splitlines()[-1].split("|")[1:-1]]
  assert cells[2:6] == ["12.0", "–", "–", "1/1"]
  assert peers.parse_set("optimizer.learning_rate=3e-3") == ("optimizer.learning_rate", 0.003)
  assert peers.parse_set("model.hash_family=balanced") == ("model.hash_family", "balanced")
  assert peers.parse_set("model.hidden=(256,)") == ("model.hidden", (256,))
  with pytest.raises(SystemExit, match="expected field=value"):
    peers.parse_set("model.R")


@pytest.mark.parametrize("name", ["bibtex", "delicious"])
def test_fast_variants(name):
  import importlib
  module = importlib.import_module(f"experiments.configs.{name}")
  base, fast = module.get_config(), module.get_config("fast")
  assert (fast.model.R, tuple(fast.model.hidden), fast.optimizer.learning_rate) == \
      ({"bibtex": 12, "delicious": 8}[name], (64,), 5e-3)
  assert base.model.R == 16 and tuple(base.model.hidden) == (512,)
  assert base.optimizer.learning_rate == 1e-3
  with pytest.raises(ValueError, match="unknown variant 'quick'"):
    module.get_config("quick")


def test_wordnet_fast_variant_changes_only_the_repetitions_and_the_schedule():
  from experiments.configs import wordnet
  base, fast = wordnet.get_config().to_dict(), wordnet.get_config("fast").to_dict()
  changed = {(g, k) for g in base if isinstance(base[g], dict)
             for k in base[g] if base[g][k] != fast[g][k]}
  assert changed == {("model", "R"), ("optimizer", "learning_rate"),
                     ("optimizer", "warmup_steps"), ("train", "num_epochs")}
  assert (fast["model"]["R"], fast["optimizer"]["learning_rate"],
          fast["optimizer"]["warmup_steps"], fast["train"]["num_epochs"]) == (4, 2e-2, 50, 2)
  with pytest.raises(ValueError, match="unknown variant 'quick'"):
    wordnet.get_config("quick")


def test_cache_env_sets_jax_persistent_cache_only_when_asked(tmp_path):
  assert speed.cache_env("") == {}
  env = speed.cache_env(str(tmp_path / "cache"))
  assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "cache")
  assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"


def test_the_suite_compiles_into_the_persistent_cache_conftest_names():
  import jax
  import jax.numpy as jnp
  folder = os.environ["JAX_COMPILATION_CACHE_DIR"]
  assert jax.config.jax_compilation_cache_dir == folder
  before = set(os.listdir(folder))
  jax.jit(lambda x: jnp.cumsum(x * 3.25) - 1.75)(jnp.arange(1237.0))  # No other test's.
  assert set(os.listdir(folder)) - before


def test_step_profile_times_the_step_and_names_its_ops():
  from experiments.bench import step_profile
  from tests.helpers import tiny_config
  c = tiny_config()
  c.data.synthetic.update(num_train=256)
  res = step_profile.profile(c, epochs=1, trace_steps=3)
  assert res["steps_timed"] == 4 and res["ms_per_step"] > 0
  ops = res["ops"]
  assert ops and all(o["ms_per_step"] > 0 for o in ops)
  assert [o["ms_per_step"] for o in ops] == sorted((o["ms_per_step"] for o in ops), reverse=True)
  # XLA's op names, not the executor's or Python's events.
  assert not any(o["op"].startswith(("ThunkExecutor", "$")) for o in ops)
  assert res["temp_mb"] > 0 and res["init_temp_mb"] >= 0
  # --epochs 0: the same accounting, nothing run.
  only = step_profile.profile(c, epochs=0, trace_steps=3)
  assert set(only) == {"temp_mb", "state_mb", "init_temp_mb", "R", "B", "D"}
  assert only["temp_mb"] == res["temp_mb"] and only["state_mb"] == res["state_mb"]


def test_throughput_worker_counts_flops_and_extrapolates_the_epoch():
  import argparse

  from experiments.bench import throughput
  args = argparse.Namespace(D=2_000, H=16, B=64, reps=2, batch=32, nnz=10, dtype="float32",
                            steps=3, warmup=1, num_batches=2, peak_n=256)
  row = throughput.worker(args)
  assert row["T"] >= 32 * 10 and row["steps_per_s"] > 0
  assert row["examples_per_s"] == row["steps_per_s"] * 32
  assert row["formula_flops_per_step"] == 2 * (6 * 32 * 16 * 64 + 4 * row["T"] * 16)
  assert row["xla_flops_per_step"] > 0 and row["matmul_peak_flops"] > 0
  # 1,000 queries at batch 32 = 32 steps; R = 8 over 2 devices = 4 reps each, twice the
  # measured 2 per device.
  hours = throughput.epoch_hours(row, 1_000, 8, 2)
  assert abs(hours - 32 / row["steps_per_s"] * 2 / 3600) < 1e-12
  md = throughput.table([row], argparse.Namespace(nnz=10, peak_n=256, queries=1_000,
                                                  total_R=8, gpus=2))
  cells = [c.strip() for c in md.splitlines()[-1].split("|")[1:-1]]
  assert cells[:5] == ["2,000", "16", "64", "2", "32"]
  assert cells[9] == ("–" if row["peak_bytes_in_use"] is None else cells[9])


def test_throughput_synthetic_queries():
  import numpy as np

  from experiments.bench import throughput
  data = throughput.synthetic_queries(D=1_000, K=10**6, batch_size=16, nnz=8, count=3)
  widths = data.widths(16)
  batches = list(data.batches(16, shuffle=False, widths=widths))
  assert len(batches) == 3
  for i, b in enumerate(batches):
    real = b["values"] != 0
    assert real.sum() == data.X[16 * i:16 * (i + 1)].nnz  # Padded, never truncated.
    assert 16 <= real.sum() <= 16 * 8  # Repeated draws merged: at most nnz per query.
    assert (b["indices"][real] < 1_000).all() and (b["labels"] < 10**6).all()
    assert np.all(b["mask"] == 1)
