"""Where one train step's time goes: ms/step and the XLA ops that take it.

    python -m experiments.bench.step_profile --config experiments/configs/bibtex.py:fast
    python -m experiments.bench.step_profile --config experiments/configs/bibtex.py:fast \
        --config.model.hidden="(512,)" --steps 50

Builds the config's data, model, optimizer, mesh and jitted train step exactly as
``train_and_evaluate`` does, runs one epoch's batches (already on the device) ``--epochs``
times, and reports the mean wall-clock per step; then records ``--trace_steps`` more steps
with the JAX profiler and lists the ops by total time per step (from the trace's
``ThunkExecutor`` events on CPU, the kernels on GPU). The op names are XLA's fusion names:
``--dump DIR`` (XLA_FLAGS=--xla_dump_to) writes the optimised HLO that defines them. This is
the tool behind the step rows of experiments/bench/NOTES.md. Writes OUT/step_profile.json
when ``--out`` is given.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = _EPOCHS = _TRACE_STEPS = _TOP = _OUT = _DUMP = None  # Flags: see _flags().

# Events of the trace that are not ops: the executor, waits, Python frames, the profiler.
_NOT_OPS = ("ThunkExecutor", "SlinkyThreadPool", "PjitFunction", "Execute", "$")


def op_times(trace_dir: str, steps: int) -> list[tuple[str, float, float]]:
  """(op name, ms per step, calls per step) from the newest perfetto trace in trace_dir."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise SystemExit(f"{trace_dir}: the profiler wrote no *.trace.json.gz")
  with gzip.open(paths[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and not name.startswith(_NOT_OPS) and "::" not in name:
      total[name] += e.get("dur", 0)
      calls[name] += 1
  return [(n, us / steps / 1e3, calls[n] / steps) for n, us in total.most_common()]


def profile(config, epochs: int, trace_steps: int) -> dict:
  import jax
  import numpy as np

  from experiments.bench.timing import timed_steps
  from mach_jax import (
    config as config_lib,
    data as data_lib,
    provenance,
    sharding,
    state as state_lib,
  )

  t0 = time.perf_counter()
  train_set, _ = data_lib.load(config.data)
  t_data = time.perf_counter() - t0
  config = config_lib.resolve(config, train_set.num_labels,
                              train_set.label_counts().sum() / train_set.num_points,
                              train_set.num_features)
  tc = config.train
  setup = state_lib.create_train_state(config, train_set, initialize=bool(epochs))
  spec, mesh, state = setup.parts.spec, setup.mesh, setup.state
  batches = [setup.put(b) for b in train_set.batches(
      tc.batch_size, shuffle=True, seed=config.seed, epoch=0, widths=setup.widths,
      dense=config.model.dense_input, num_shards=mesh.shape[sharding.DATA_AXIS])]
  memory = setup.train_step.lower(state, batches[0]).compile().memory_analysis()
  init_memory = setup.init_program().memory_analysis()
  accounting = {"temp_mb": memory.temp_size_in_bytes / 2**20,
                "state_mb": memory.argument_size_in_bytes / 2**20,
                "init_temp_mb": init_memory.temp_size_in_bytes / 2**20}
  if not epochs:  # XLA's accounting only: nothing is run.
    return {**accounting, "R": spec.R, "B": spec.B, "D": train_set.num_features}
  state, first_s, _ = timed_steps(setup, state, batches, 1)
  state, seconds, m = timed_steps(setup, state, batches, epochs * len(batches))
  ms_per_step = seconds / (epochs * len(batches)) * 1e3
  if not np.isfinite(np.asarray(m["loss"])).all():
    raise SystemExit("the loss went non-finite while profiling")

  trace_dir = tempfile.mkdtemp(prefix="step_profile_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    state, _, _ = timed_steps(setup, state, batches, trace_steps)
  ops = op_times(trace_dir, trace_steps)
  return {"ms_per_step": ms_per_step, "first_step_s": first_s, "data_s": t_data,
          "steps_timed": epochs * len(batches), "batch_size": tc.batch_size,
          **accounting,
          "peak_rss_mb": provenance.peak_rss_bytes() / 2**20,
          "R": spec.R, "B": spec.B, "D": train_set.num_features, "input_dim": spec.input_dim,
          "hidden": list(config.model.hidden), "mesh": dict(mesh.shape),
          "device": str(jax.devices()[0].device_kind), "host": platform.node(),
          "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
          "ops": [{"op": n, "ms_per_step": ms, "calls_per_step": c} for n, ms, c in ops]}


def _flags():
  """Defined only when run as a script: importing ``profile`` (tests) defines no flags, so
  it cannot clash with another module's --config."""
  global _CONFIG, _EPOCHS, _TRACE_STEPS, _TOP, _OUT, _DUMP
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                            lock_config=True)
  _EPOCHS = flags.DEFINE_integer("epochs", 3, "timed passes over one epoch's batches (0: "
                                 "XLA's memory accounting of the step only, nothing run)")
  _TRACE_STEPS = flags.DEFINE_integer("trace_steps", 30, "steps recorded by the profiler")
  _TOP = flags.DEFINE_integer("top", 15, "ops listed")
  _OUT = flags.DEFINE_string("out", "", "folder for step_profile.json (optional)")
  _DUMP = flags.DEFINE_string("dump", "", "write XLA's optimised HLO here (names the ops)")
  flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  if _DUMP.value:  # Read by XLA when jax starts, which is below.
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_dump_to="
                                        + os.path.abspath(_DUMP.value), "--xla_dump_hlo_as_text"])
  res = profile(_CONFIG.value, _EPOCHS.value, _TRACE_STEPS.value)
  if not _EPOCHS.value:
    print(f"compiled step (XLA's accounting, first batch shape, R={res['R']}, B={res['B']}, "
          f"D={res['D']}): {res['temp_mb']:.0f} MB of temporaries, {res['state_mb']:.0f} MB "
          f"of arguments; the initial state's program: {res['init_temp_mb']:.0f} MB of "
          "temporaries")
    return
  print(f"{res['ms_per_step']:.2f} ms/step over {res['steps_timed']} steps (batch "
        f"{res['batch_size']}, R={res['R']}, B={res['B']}, D={res['D']}, hidden "
        f"{res['hidden']}, mesh {res['mesh']}, {res['device']}, {res['cores']} cores); "
        f"first step {res['first_step_s']:.2f} s")
  print(f"compiled step (XLA's accounting, first batch shape): {res['temp_mb']:.0f} MB of "
        f"temporaries, {res['state_mb']:.0f} MB of arguments; the initial state's program: "
        f"{res['init_temp_mb']:.0f} MB of temporaries; peak RSS of the process "
        f"{res['peak_rss_mb']:.0f} MB")
  listed = res["ops"][:_TOP.value]
  print(f"ops by time, {sum(o['ms_per_step'] for o in res['ops']):.2f} ms/step in all "
        f"(ops may overlap on several threads):")
  for o in listed:
    print(f"  {o['ms_per_step']:7.3f} ms  x{o['calls_per_step']:.0f}  {o['op']}")
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "step_profile.json"), "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  _flags()
  sys.exit(app.run(main))
