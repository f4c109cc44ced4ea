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

  from experiments.bench.timing import timed_steps
  from mach_jax import config as config_lib, model as model_lib, sharding, state as state_lib
  from mach_jax.data.synthetic import make_catalogue

  c = config_lib.default_config()
  c.model.update(R=args.R, B=args.B, hidden=(args.H,), loss="softmax_hist")
  c.mesh = (("data", args.data), ("rep", -1))
  c.optimizer.row_sparse = bool(args.row_sparse)
  c.train.batch_size = args.batch_size
  data, _ = make_catalogue(num_train=args.batch_size * 8, num_test=1, num_classes=args.K,
                           num_features=args.D, seed=0)
  setup = state_lib.create_train_state(c, data, total_steps=1000)
  mesh = setup.mesh
  batches = [setup.put(b) for b in data.batches(args.batch_size, shuffle=True,
                                                 widths=setup.widths,
                                                 num_shards=mesh.shape[sharding.DATA_AXIS])]
  state = setup.state
  hlo = setup.train_step.lower(state, batches[0]).compile().as_text()
  state, compile_s, _ = timed_steps(setup, state, batches, 1)
  state, _, _ = timed_steps(setup, state, batches[1:3], 2)
  state, elapsed, _ = timed_steps(setup, state, batches, args.steps)
  return {"row_sparse": bool(args.row_sparse), "devices": mesh.size,
          "data": mesh.shape[sharding.DATA_AXIS], "rep": mesh.shape["rep"], "R": args.R,
          "reps_per_device": args.R // mesh.shape["rep"], "batch_size": args.batch_size,
          "steps_per_s": args.steps / elapsed, "examples_per_s": args.steps * args.batch_size
          / elapsed, "first_step_s": compile_s, "collectives": sharding.collectives(hlo),
          "params": model_lib.count_params(state.params),
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
