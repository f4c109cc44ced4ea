"""Train-step throughput per device at the paper's Amazon shape, against a measured matmul peak.

    python -m experiments.bench.throughput --out runs/throughput_gpu          # on one GPU
    python -m experiments.bench.throughput --out runs/throughput_cpu --preset tiny

For every shape of the preset (input dimension D, hidden width H, buckets B, repetitions on
this device, batch size), one fresh process builds the MACH train step exactly as
``train_and_evaluate`` does (row-sparse Adam on the input table, ``model.dtype`` for the
computation with float32 parameters and Adam state), feeds it synthetic query batches
(``--nnz`` Zipf-popular draws of hashed features per query, like text n-grams, repeats
merged; one label each out of K = 49.46M, the paper's Amazon catalogue), and reports:

* examples/s and steps/s on this device, after ``--warmup`` steps;
* FLOP/s achieved: XLA's own count of the compiled step's floating-point operations
  (``compiled.cost_analysis()``) times steps/s, and the same from the formula
  R·(6·b·H·B + 4·T·H) (output layer forward and both backward products; the input layer's
  gather and its scatter-add; T = b·nnz), against the peak measured on the same device with
  one large matmul in the same dtype (``--peak_n``);
* memory: the device's peak bytes in use (GPUs report it; CPUs do not);
* the epoch-time extrapolation: ``--queries`` queries (70M) with ``--total_R`` repetitions
  (32) over ``--gpus`` devices (8), each holding total_R / gpus repetitions. Repetitions never
  communicate, so a device's step time depends only on its own repetitions: the epoch takes
  (queries / batch) steps at the measured rate of a shape with total_R / gpus repetitions
  per device (or, for another count, scaled linearly in repetitions).

Writes OUT/throughput.json and OUT/throughput.md. Figures on one H200: docs/scaling.md
(tests/test_speed_bench.py runs the tiny preset on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from experiments.bench import workers

K_AMAZON = 49_462_358  # Medini et al. 2019, the Amazon search data set.

# (D, H, B, reps on this device, batch).
PRESETS = {
    "amazon": [(200_000, 1024, 10_000, 4, 1024), (200_000, 1024, 10_000, 4, 4096),
               (200_000, 2048, 10_000, 4, 2048), (200_000, 2048, 20_000, 4, 2048),
               (200_000, 2048, 20_000, 8, 2048), (300_000, 4096, 20_000, 4, 2048)],
    "tiny": [(5_000, 32, 256, 2, 64), (5_000, 64, 512, 2, 128)],
}


def synthetic_queries(D: int, K: int, batch_size: int, nnz: int, count: int, seed: int = 0):
  """``count`` batches' worth of queries: ``nnz`` Zipf-popular feature draws each (repeats merged,
  so a query has at most ``nnz`` distinct features), one label each out of K."""
  import numpy as np
  import scipy.sparse as sp

  from mach_jax.data.xc import XCData

  rng = np.random.default_rng(seed)
  n = batch_size * count
  cdf = np.cumsum(1.0 / np.arange(1, D + 1))
  cols = np.minimum(np.searchsorted(cdf, rng.random((n, nnz)) * cdf[-1]), D - 1)
  rows = np.repeat(np.arange(n), nnz)
  X = sp.csr_matrix((np.ones(n * nnz, np.float32), (rows, cols.ravel())), shape=(n, D))
  X.sum_duplicates()
  X.data[:] = 1.0
  X.indices = X.indices.astype(np.int32)
  X.indptr = X.indptr.astype(np.int64)
  Y = sp.csr_matrix((np.ones(n, np.float32), rng.integers(0, K, n).astype(np.int32),
                     np.arange(n + 1)), shape=(n, K))
  return XCData(X=X, Y=Y)


def matmul_peak(dtype: str, n: int, repeats: int = 10) -> float:
  """FLOP/s of an [n, n] x [n, n] matmul in ``dtype`` (float32 accumulation), best of runs."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def formula_flops(R: int, batch: int, H: int, B: int, T: int) -> int:
  """Per step: R·(6·b·H·B + 4·T·H) (see the module docstring)."""
  return R * (6 * batch * H * B + 4 * T * H)


def xla_flops(compiled) -> float | None:
  costs = compiled.cost_analysis()
  if isinstance(costs, (list, tuple)):
    costs = costs[0] if costs else None
  return float(costs["flops"]) if costs and "flops" in costs else None


def worker(args) -> dict:
  import jax

  from experiments.bench.timing import timed_steps
  from mach_jax import config as config_lib, model as model_lib, state as state_lib

  c = config_lib.default_config()
  c.model.update(R=args.reps, B=args.B, hidden=(args.H,), loss="softmax_hist", dtype=args.dtype,
                 sequential_reps=getattr(args, "sequential", False),
                 embedding_bag=getattr(args, "embedding_bag", "auto"))
  c.mesh = (("data", 1), ("rep", 1))
  c.optimizer.row_sparse = True
  c.train.batch_size = args.batch
  data = synthetic_queries(args.D, K_AMAZON, args.batch, args.nnz, args.num_batches)
  setup = state_lib.create_train_state(c, data, total_steps=10_000)
  batches = [setup.put(b) for b in data.batches(args.batch, shuffle=False, widths=setup.widths)]
  state = setup.state
  compiled = setup.train_step.lower(state, batches[0]).compile()
  state, _, _ = timed_steps(setup, state, batches, args.warmup)
  state, elapsed, _ = timed_steps(setup, state, batches, args.steps)
  ops = []
  if getattr(args, "trace_steps", 0):
    import tempfile

    from experiments.bench.step_profile import op_times
    trace_dir = tempfile.mkdtemp(prefix="throughput_trace_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      state, _, _ = timed_steps(setup, state, batches, args.trace_steps)
    ops = [{"op": n, "ms_per_step": ms, "calls_per_step": c}
           for n, ms, c in op_times(trace_dir, args.trace_steps)[:15]]
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  steps_per_s = args.steps / elapsed
  flops_xla = xla_flops(compiled)
  flops_formula = formula_flops(args.reps, args.batch, args.H, args.B, setup.widths.nnz)
  peak = matmul_peak(args.dtype, args.peak_n)
  return {"D": args.D, "H": args.H, "B": args.B, "reps_per_device": args.reps,
          "batch": args.batch, "nnz_per_query": args.nnz, "T": setup.widths.nnz,
          "dtype": args.dtype,
          "steps_per_s": steps_per_s, "examples_per_s": steps_per_s * args.batch,
          "xla_flops_per_step": flops_xla, "formula_flops_per_step": flops_formula,
          "achieved_flops_xla": flops_xla * steps_per_s if flops_xla else None,
          "achieved_flops_formula": flops_formula * steps_per_s,
          "matmul_peak_flops": peak, "peak_n": args.peak_n,
          "params": model_lib.count_params(state.params),
          "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
          "bytes_limit": stats.get("bytes_limit"),
          "device_kind": device.device_kind, "platform": device.platform,
          "sequential_reps": bool(getattr(args, "sequential", False)),
          "embedding_bag": getattr(args, "embedding_bag", "auto"), "ops": ops}


def epoch_hours(row: dict, queries: int, total_R: int, gpus: int) -> float:
  """Hours for one epoch of ``queries`` with total_R repetitions over ``gpus`` devices, each
  running (total_R / gpus) repetitions at this row's measured rate, linear in repetitions."""
  steps = -(-queries // row["batch"])
  per_device = total_R / gpus
  return steps / row["steps_per_s"] * per_device / row["reps_per_device"] / 3600


def table(rows: list[dict], args) -> str:
  r0 = rows[0]
  head = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.node()}, {r0['platform']} "
          f"({r0['device_kind']}); {r0['dtype']} compute, float32 parameters and row-sparse "
          f"Adam; {args.nnz} features per query; one process per shape. Matmul peak: "
          f"[{args.peak_n}]^2 {r0['dtype']} matmul, best of 10. Epoch: {args.queries:,} "
          f"queries, R = {args.total_R} over {args.gpus} devices.\n\n")
  lines = ["| D | H | B | reps/device | batch | examples/s | TFLOP/s (XLA count) | % of matmul "
           "peak | TFLOP/s (formula) | peak memory GiB | epoch hours |",
           "|" + "---|" * 11]
  for r in rows:
    xla, mem = r["achieved_flops_xla"], r["peak_bytes_in_use"]
    cells = [f"{r['D']:,}", str(r["H"]), f"{r['B']:,}", str(r["reps_per_device"]),
             str(r["batch"]), f"{r['examples_per_s']:,.0f}",
             f"{xla / 1e12:.2f}" if xla else "–",
             f"{100 * xla / r['matmul_peak_flops']:.0f}%" if xla else "–",
             f"{r['achieved_flops_formula'] / 1e12:.2f}",
             f"{mem / 2**30:.1f}" if mem is not None else "–",
             f"{epoch_hours(r, args.queries, args.total_R, args.gpus):.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return head + "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--preset", default="amazon", choices=sorted(PRESETS))
  p.add_argument("--dtype", default="bfloat16", help="computation dtype (parameters: float32)")
  p.add_argument("--nnz", type=int, default=40, help="hashed features per query")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--num_batches", type=int, default=8, help="distinct batches, cycled")
  p.add_argument("--peak_n", type=int, default=8192, help="size of the peak matmul")
  p.add_argument("--queries", type=int, default=70_000_000)
  p.add_argument("--total_R", type=int, default=32)
  p.add_argument("--gpus", type=int, default=8)
  p.add_argument("--shapes", default="", help="'D,H,B,reps,batch;...' instead of --preset")
  p.add_argument("--sequential", action="store_true",
                 help="config.model.sequential_reps: repetitions one after another")
  p.add_argument("--embedding_bag", default="auto", choices=("auto", "dense", "gather"),
                 help="config.model.embedding_bag")
  p.add_argument("--trace_steps", type=int, default=0,
                 help="also profile this many steps and list the 15 slowest ops per shape")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  for name in ("--D", "--H", "--B", "--reps", "--batch"):
    p.add_argument(name, type=int, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    workers.emit(worker(args))
    return
  if args.total_R % args.gpus:
    raise SystemExit(f"--total_R={args.total_R} must split evenly over --gpus={args.gpus}")
  os.makedirs(args.out, exist_ok=True)
  rows = []
  shapes = ([tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
            if args.shapes else PRESETS[args.preset])
  if any(len(s) != 5 for s in shapes):
    raise SystemExit(f"--shapes={args.shapes!r}: expected 'D,H,B,reps,batch' groups split by ';'")
  for D, H, B, reps, batch in shapes:
    argv = ["--out", args.out, "--dtype", args.dtype, "--nnz", str(args.nnz),
            "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--num_batches", str(args.num_batches), "--peak_n", str(args.peak_n),
            "--trace_steps", str(args.trace_steps), *(["--sequential"] * args.sequential),
            "--embedding_bag", args.embedding_bag,
            "--D", str(D), "--H", str(H), "--B", str(B), "--reps", str(reps),
            "--batch", str(batch)]
    rows.append(workers.run("experiments.bench.throughput", argv,
                            f"D={D} H={H} B={B} reps={reps} batch={batch}", dict(os.environ)))
    print(rows[-1], flush=True)
  meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} "
          f"({os.cpu_count()} cores)", "args": vars(args)}
  with open(os.path.join(args.out, "throughput.json"), "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=2)
  md = table(rows, args)
  with open(os.path.join(args.out, "throughput.md"), "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  main()
