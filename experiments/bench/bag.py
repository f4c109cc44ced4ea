"""The embedding bag's ways side by side: one gather and segment-sum, chunks, a dense GEMM.

    python -m experiments.bench.bag                                  # text serving shape
    python -m experiments.bench.bag --D 1836 --H 512 --b 128 --nnz 96 --R 16 --backward

R repetitions (vmapped, as the model runs them side by side) of a [D, H] table meet a batch
of b rows with ``--nnz`` uniformly drawn nonzeros each (T = b * nnz), by
``bag.embedding_bag`` with ``--chunks`` (0: one gather of all T rows) and by ``bag.densify``
and a GEMM; ``--backward`` times the gradient with respect to the tables instead of the
forward pass. Each way runs ``--rounds`` times, alternating, and reports the best of
``--repeat`` calls per round in ms. Writes OUT/bag.json when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def ways(args):
  import jax

  from mach_jax import bag

  def one(t, idx, val, seg, chunk):
    if chunk is None:
      return bag.densify(idx, val, seg, args.b, args.D) @ t
    return bag.embedding_bag(t, idx, val, seg, args.b, chunk=chunk)

  def make(chunk):
    fwd = lambda tables, idx, val, seg: jax.vmap(
        lambda t: one(t, idx, val, seg, chunk))(tables)
    if not args.backward:
      return jax.jit(fwd)
    return jax.jit(jax.grad(lambda tables, idx, val, seg, w: (
        fwd(tables, idx, val, seg) * w).sum()))

  out = {f"chunk {c}" if c else "one gather": make(c) for c in args.chunks}
  out["dense"] = make(None)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--D", type=int, default=32768)
  p.add_argument("--H", type=int, default=256)
  p.add_argument("--b", type=int, default=512)
  p.add_argument("--nnz", type=int, default=192, help="nonzeros per row")
  p.add_argument("--R", type=int, default=1)
  p.add_argument("--chunks", type=lambda s: [int(c) for c in s.split(",")],
                 default=[0, 512, 1024, 4096])
  p.add_argument("--backward", action="store_true")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--repeat", type=int, default=5)
  p.add_argument("--out", default="")
  args = p.parse_args()

  import jax
  import numpy as np

  from mach_jax import provenance

  rng = np.random.default_rng(0)
  T = args.b * args.nnz
  tables = jax.numpy.asarray(rng.standard_normal((args.R, args.D, args.H), np.float32))
  inputs = (rng.integers(0, args.D, T).astype(np.int32),
            rng.standard_normal(T).astype(np.float32),
            np.repeat(np.arange(args.b, dtype=np.int32), args.nnz))
  if args.backward:
    inputs += (rng.standard_normal((args.R, args.b, args.H)).astype(np.float32),)
  fns = ways(args)
  reference = np.asarray(fns["dense"](tables, *inputs))
  times = {name: [] for name in fns}
  for _ in range(args.rounds):
    for name, fn in fns.items():
      result = jax.block_until_ready(fn(tables, *inputs))  # Compiled on the first round.
      err = float(np.abs(np.asarray(result) - reference).max())
      best = np.inf
      for _ in range(args.repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(tables, *inputs))
        best = min(best, time.perf_counter() - t0)
      times[name].append(1e3 * best)
      print(f"{name:>12}: {1e3 * best:8.2f} ms  (max |diff| from dense {err:.1e})", flush=True)
  if not args.out:
    return
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "bag.json"), "w") as f:
    json.dump({"shape": {k: getattr(args, k) for k in ("D", "H", "b", "nnz", "R")}, "T": T,
               "backward": args.backward, "ms": times, "host": platform.node(),
               "cpu": provenance.cpu_model(), "cores": os.cpu_count(),
               "versions": provenance.library_versions(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, f, indent=1)


if __name__ == "__main__":
  main()
