"""Train steps/s against the number of devices at a fixed number of repetitions.

    python -m experiments.bench.scaling --out runs/scaling            # CPU, simulated devices
    python -m experiments.bench.scaling --out runs/scaling_gpu --devices 1 --R 1,4,8 \
        --batch_size 1024 --D 100000 --H 1024 --B 10000                    # one GPU

Each device count runs in its own process (XLA_FLAGS must be set before jax starts). On CPU
the "devices" are simulated and share the machine's cores, so the table shows the overhead
of splitting R over more devices, not a speedup. On a GPU it reports examples/s for one and
several repetitions per device. Writes OUT/scaling.json and OUT/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

from experiments.bench import workers


def worker(args) -> dict:
  import jax

  from mach_jax import model as model_lib, sharding, train
  from mach_jax.data import batching
  from mach_jax.data.synthetic import make_catalogue
  from experiments.configs.base import base_config

  c = base_config()
  c.model.update(R=args.R, B=args.B, hidden=(args.H,), loss="softmax_hist")
  c.mesh = (("data", args.data), ("rep", -1))
  c.optimizer.row_sparse = bool(args.row_sparse)
  data, _ = make_catalogue(num_train=args.batch_size * 8, num_test=1, num_classes=args.K,
                           num_features=args.D, seed=0)
  spec, model, tx, row_sparse = train.make_parts(c, data.num_features, data.num_labels, 1000)
  mesh = sharding.make_mesh(c.mesh, args.R, args.batch_size)
  shards = mesh.shape[sharding.DATA_AXIS]
  widths = batching.Widths.for_data(data.X, data.Y, args.batch_size // shards)
  host = list(batching.iterate_batches(data.X, data.Y, args.batch_size, shuffle=True,
                                       widths=widths, num_shards=shards))
  batches = [sharding.put(b, sharding.batch_shardings(mesh, b)) for b in host]
  state = train.init_state(model, tx, jax.random.key(0), host[0], mesh, row_sparse)
  step = train.make_train_step(model, tx, spec, c.model.loss, mesh, state, host[0], row_sparse)
  hlo = step.lower(state, batches[0]).compile().as_text()
  sync = train.must_sync_each_step(mesh)
  t0 = time.perf_counter()
  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for b in batches[1:3]:
    state, m = step(state, b)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(args.steps):
    state, m = step(state, batches[i % len(batches)])
    if sync:
      jax.block_until_ready(m)
  jax.block_until_ready(m)
  elapsed = time.perf_counter() - t0
  return {"row_sparse": bool(args.row_sparse), "devices": mesh.size, "data": shards, "rep": mesh.shape["rep"], "R": args.R,
          "reps_per_device": args.R // mesh.shape["rep"], "batch_size": args.batch_size,
          "steps_per_s": args.steps / elapsed, "examples_per_s": args.steps * args.batch_size
          / elapsed, "first_step_s": compile_s, "collectives": sharding.collectives(hlo),
          "params": model_lib.count_params(state["params"]),
          "device_kind": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--devices", default="1,2,4,8", help="simulated CPU device counts")
  p.add_argument("--R", default="8", help="comma-separated repetition counts")
  p.add_argument("--data", type=int, default=1, help="size of the 'data' mesh axis")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--K", type=int, default=100_000)
  p.add_argument("--D", type=int, default=20_000)
  p.add_argument("--H", type=int, default=128)
  p.add_argument("--B", type=int, default=1024)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--row_sparse", type=int, default=0,
                 help="1: row-sparse Adam for the input table")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    args.R = int(args.R)
    workers.emit(worker(args))
    return
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for R in [int(r) for r in args.R.split(",")]:
    for n in [int(d) for d in args.devices.split(",")]:
      env = dict(os.environ)
      if _has_gpu():  # n real GPUs.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(n))
      else:  # n simulated CPU devices sharing the machine's cores.
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        env["JAX_PLATFORMS"] = "cpu"
      argv = ["--out", args.out, "--R", str(R), "--data", str(args.data),
              "--batch_size", str(args.batch_size), "--K", str(args.K), "--D", str(args.D),
              "--H", str(args.H), "--B", str(args.B), "--steps", str(args.steps),
              "--row_sparse", str(args.row_sparse)]
      rows.append(workers.run("experiments.bench.scaling", argv, f"{n} devices, R={R}", env))
      print(rows[-1], flush=True)
  base = {r["R"]: r["steps_per_s"] for r in rows if r["devices"] == 1}
  meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} "
          f"({os.cpu_count()} cores)", "args": vars(args)}
  with open(os.path.join(args.out, "scaling.json"), "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=2)
  lines = [f"Measured {meta['date']} on {meta['machine']}, {rows[0]['platform']} "
           f"({rows[0]['device_kind']}); batch {args.batch_size}, D={args.D}, H={args.H}, "
           f"B={args.B}, {'row-sparse' if args.row_sparse else 'dense'} Adam.", "",
           "| R | devices (data x rep) | reps/device | steps/s | examples/s | vs 1 device "
           "| collectives in step |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    rel = f"{r['steps_per_s'] / base[r['R']]:.2f}" if r["R"] in base else "–"
    coll = ", ".join(f"{n} {k}" for k, n in r["collectives"].items()) or "none"
    lines.append(f"| {r['R']} | {r['devices']} ({r['data']} x {r['rep']}) | "
                 f"{r['reps_per_device']} | {r['steps_per_s']:.2f} | {r['examples_per_s']:.0f} "
                 f"| {rel} | {coll} |")
  with open(os.path.join(args.out, "scaling.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def _has_gpu() -> bool:
  try:
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
  except OSError:
    return False


if __name__ == "__main__":
  main()
