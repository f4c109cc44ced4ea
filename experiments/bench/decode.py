"""Exact against candidate top-k decoding: latency, memory and recall, at large K.

    python -m experiments.bench.decode --K 1000000 --R 16 --B 4096 --out runs/decode
    python -m experiments.bench.decode --K 1000000,10000000,50000000 --out runs/decode

The "model" is synthetic: per-repetition logits with Gaussian noise in which each query's
3 true classes have their buckets raised by ``--signal`` in every repetition (what a trained
MACH model does for the classes it believes in). Each K runs in its own process so peak
memory (max RSS) is per configuration. Recall is |candidate top-5 ∩ exact top-5| / 5 over
``--recall_queries`` queries. Writes OUT/decode.json and OUT/decode.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from experiments.bench import workers
from mach_jax import provenance


def _timed(fn, *args, repeat=3):
  import jax
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  t0 = time.perf_counter()
  for _ in range(repeat):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / repeat, out


def worker(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from mach_jax import decode
  from mach_jax.hashing import HashSpec

  spec = HashSpec(args.family, K=args.K, B=args.B, R=args.R, seed=0)
  rng = np.random.default_rng(0)
  nq = max(args.batches + [args.recall_queries])
  logits = rng.normal(size=(spec.R, nq, spec.B)).astype(np.float32)
  true = rng.integers(0, spec.K, size=(nq, 3))
  buckets = spec.buckets(true)  # [R, nq, 3]
  for j in range(3):
    np.add.at(logits, (np.arange(spec.R)[:, None], np.arange(nq)[None], buckets[:, :, j]),
              args.signal)
  logits = jnp.asarray(logits)
  row = {"K": spec.K, "R": spec.R, "B": spec.B, "family": spec.family,
         "estimator": args.estimator}
  exact = decode.Decoder(spec, "softmax_hist", args.recall_queries,
                         memory_budget_bytes=args.budget_mb << 20)
  row["exact_table_bytes"] = exact.nbytes
  q = logits[:, :args.recall_queries]
  t, (_, ref) = _timed(lambda l: exact.topk(l, 5, args.estimator), q, repeat=1)
  row[f"exact_ms_per_query@{args.recall_queries}"] = 1e3 * t / args.recall_queries
  t, _ = _timed(lambda l: exact.topk(l, 5, args.estimator), logits[:, :1], repeat=1)
  row["exact_ms_per_query@1"] = 1e3 * t
  ref = np.asarray(ref)
  t0 = time.perf_counter()
  index_dec = decode.Decoder(spec, "softmax_hist", 1, method="candidates", m=1)
  row["index_build_s"] = time.perf_counter() - t0
  row["index_bytes"] = index_dec.nbytes
  for m in args.m:
    dec = decode.Decoder(spec, "softmax_hist", 1, method="candidates", m=m,
                         index=index_dec.index)
    fn = lambda l: dec.topk(l, 5, args.estimator)
    for b in args.batches:
      t, _ = _timed(fn, logits[:, :b], repeat=args.repeat if b == 1 else 1)
      row[f"cand_m{m}_ms_per_query@{b}"] = 1e3 * t / b
    _, (_, got) = _timed(fn, q, repeat=1)
    got = np.asarray(got)
    row[f"cand_m{m}_recall@5"] = float(np.mean([len(set(a) & set(b)) / 5
                                                for a, b in zip(ref, got)]))
  row["peak_rss_mb"] = provenance.peak_rss_bytes() / 2**20
  row["device"] = str(jax.devices()[0].device_kind)
  return row


def real_models(args) -> list[dict]:
  """Exact vs candidates on trained models (WORKDIR/model) and their test files."""
  import jax
  import numpy as np

  from mach_jax import metrics
  from mach_jax.data.xc import read_xc
  from mach_jax.predictor import Predictor

  rows = []
  for workdir in args.models.split(","):
    pred = Predictor.load(os.path.join(workdir, "model"))
    test = read_xc(pred.config.data.test)
    t0 = time.perf_counter()
    _, exact = pred.predict_topk(test.X, 5, args.estimator, method="exact")
    exact_s = time.perf_counter() - t0
    base = metrics.evaluate(exact, test.Y)
    for m in args.m:
      if m > pred.spec.B:
        continue
      pred.predict_topk(test.X[:1], 5, args.estimator, method="candidates", m=m)  # Warm-up.
      t0 = time.perf_counter()
      _, cand = pred.predict_topk(test.X, 5, args.estimator, method="candidates", m=m)
      cand_s = time.perf_counter() - t0
      got = metrics.evaluate(cand, test.Y)
      rows.append({"model": workdir, "K": pred.spec.K, "R": pred.spec.R, "B": pred.spec.B,
                   "m": m, "points": test.num_points,
                   "recall@5": float(np.mean([len(set(a) & set(b)) / 5
                                              for a, b in zip(exact, cand)])),
                   "exact_P@1": base["P@1"], "exact_P@5": base["P@5"],
                   "cand_P@1": got["P@1"], "cand_P@5": got["P@5"],
                   "exact_ms_per_query": 1e3 * exact_s / test.num_points,
                   "cand_ms_per_query": 1e3 * cand_s / test.num_points,
                   "device": str(jax.devices()[0].device_kind)})
      print(rows[-1], flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--K", default="1000000", help="comma-separated class counts")
  p.add_argument("--R", type=int, default=16)
  p.add_argument("--B", type=int, default=4096)
  p.add_argument("--family", default="murmur")
  p.add_argument("--estimator", default="mean")
  p.add_argument("--m", default="1,2,4", help="buckets probed per repetition")
  p.add_argument("--batches", default="1,256")
  p.add_argument("--recall_queries", type=int, default=32)
  p.add_argument("--signal", type=float, default=3.0)
  p.add_argument("--budget_mb", type=int, default=16)
  p.add_argument("--repeat", type=int, default=5)
  p.add_argument("--models", default="",
                  help="comma-separated training workdirs: compare the decoders on their "
                       "trained models and test files instead of the synthetic model")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  args.m = [int(x) for x in str(args.m).split(",")]
  args.batches = [int(x) for x in str(args.batches).split(",")]
  if args.models:
    os.makedirs(args.out, exist_ok=True)
    rows = real_models(args)
    with open(os.path.join(args.out, "decode_real.json"), "w") as f:
      json.dump({"date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=2)
    lines = ["| model | K | R x B | m | recall@5 of exact | P@1 exact / cand | "
             "P@5 exact / cand | ms/query exact / cand |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
      lines.append(f"| {os.path.basename(r['model'].rstrip('/'))} | {r['K']} | "
                   f"{r['R']} x {r['B']} | {r['m']} | {r['recall@5']:.3f} | "
                   f"{r['exact_P@1']:.3f} / {r['cand_P@1']:.3f} | "
                   f"{r['exact_P@5']:.3f} / {r['cand_P@5']:.3f} | "
                   f"{r['exact_ms_per_query']:.2f} / {r['cand_ms_per_query']:.2f} |")
    with open(os.path.join(args.out, "decode_real.md"), "w") as f:
      f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return
  if args.worker:
    args.K = int(args.K)
    workers.emit(worker(args))
    return
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for K in [int(k) for k in args.K.split(",")]:
    argv = ["--out", args.out, "--K", str(K), "--R", str(args.R), "--B", str(args.B),
            "--family", args.family, "--estimator", args.estimator,
            "--m", ",".join(map(str, args.m)), "--batches", ",".join(map(str, args.batches)),
            "--recall_queries", str(args.recall_queries), "--signal", str(args.signal),
            "--budget_mb", str(args.budget_mb), "--repeat", str(args.repeat)]
    rows.append(workers.run("experiments.bench.decode", argv, f"K={K}"))
    print(rows[-1], flush=True)
  meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} "
          f"({os.cpu_count()} cores)", "args": vars(args)}
  with open(os.path.join(args.out, "decode.json"), "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=2)
  rq = args.recall_queries
  lines = [f"Measured {meta['date']} on {meta['machine']}, {rows[0]['device']}; R={args.R}, "
           f"B={args.B}, {args.family} hash, {args.estimator} estimator, top-5; "
           f"recall over {rq} queries.", "",
           f"| K | exact ms/query (batch 1 / {rq}) | index build s | index MB | m "
           "| candidates ms/query (" + " / ".join(f"batch {b}" for b in args.batches)
           + ") | recall@5 of exact | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    for m in args.m:
      times = " / ".join(f"{r[f'cand_m{m}_ms_per_query@{b}']:.2f}" for b in args.batches)
      lines.append(f"| {r['K']:,} | {r['exact_ms_per_query@1']:.1f} / "
                   f"{r[f'exact_ms_per_query@{rq}']:.1f} | {r['index_build_s']:.1f} | "
                   f"{r['index_bytes'] / 2**20:.0f} | {m} | {times} | "
                   f"{r[f'cand_m{m}_recall@5']:.3f} | {r['peak_rss_mb']:.0f} |")
  with open(os.path.join(args.out, "decode.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
