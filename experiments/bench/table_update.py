"""Row-sparse Adam's pass over a whole input table, by how its moments are stored.

    python -m experiments.bench.table_update                  # the text config's shape
    python -m experiments.bench.table_update --D 16384 --touched 0.9

``optim.row_sparse_adam``'s ``dense_update_at`` (the update the text config's step makes of
repetition r of the stacked [R, D, H] tables, in blocks of rows written in place) for each
way of storing the moments: float32 (the default), bfloat16 (``optimizer.
table_moments_dtype``), one second moment per row (``optimizer.rowwise_nu``), and both. A
fraction ``--touched`` of the rows is touched (text WordNet's batches touch about 45% of a
repetition's 32,768 rows). Each way runs ``--rounds`` times, alternating, and reports the
mean ms per repetition over ``--repeat`` calls (each on the next repetition). Writes
OUT/table_update.json when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

WAYS = {"float32": {}, "bfloat16 moments": {"moments_dtype": "bfloat16"},
        "rowwise nu": {"rowwise": True},
        "both": {"rowwise": True, "moments_dtype": "bfloat16"}}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--D", type=int, default=32768)
  p.add_argument("--H", type=int, default=256)
  p.add_argument("--R", type=int, default=8)
  p.add_argument("--touched", type=float, default=0.45, help="fraction of rows touched")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--repeat", type=int, default=16)
  p.add_argument("--out", default="")
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np

  from mach_jax import optim, provenance

  rng = np.random.default_rng(0)
  touched = jnp.asarray(rng.uniform(size=args.D) < args.touched)
  grads = jnp.asarray(0.01 * rng.standard_normal((args.D, args.H), np.float32))
  runs = {}
  for name, kw in WAYS.items():
    tx = optim.row_sparse_adam(3e-3, **kw)
    tables = jnp.asarray(rng.standard_normal((args.R, args.D, args.H), np.float32))
    states = jax.vmap(tx.init)(tables)
    step = jax.jit(tx.dense_update_at, donate_argnums=(0, 4)).lower(
        tables, 0, touched, grads, states).compile()
    runs[name] = [step, tables, states]
  times = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, run in runs.items():
      step, tables, states = run
      tables, states = jax.block_until_ready(step(tables, 0, touched, grads, states))
      t0 = time.perf_counter()
      for i in range(args.repeat):
        tables, states = step(tables, i % args.R, touched, grads, states)
      jax.block_until_ready(tables)
      ms = 1e3 * (time.perf_counter() - t0) / args.repeat
      run[1:] = tables, states
      times[name].append(ms)
      print(f"{name:>16}: {ms:7.2f} ms a repetition", flush=True)
  if not args.out:
    return
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "table_update.json"), "w") as f:
    json.dump({"shape": {k: getattr(args, k) for k in ("D", "H", "R", "touched")},
               "ms_per_repetition": times, "host": platform.node(),
               "cpu": provenance.cpu_model(), "cores": os.cpu_count(),
               "versions": provenance.library_versions(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, f, indent=1)


if __name__ == "__main__":
  main()
