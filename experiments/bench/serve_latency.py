"""Single-query latency of a text model, in process and through the HTTP service.

    python -m experiments.bench.serve_latency --workdir runs/deb_text \
        --queries runs/data/debian/test.tsv --n 1000
    python -m experiments.bench.serve_latency --workdir runs/cal_bibtex \
        --queries ../shared/data/bibtex/test.txt.gz --n 1000     # an XC model: in process

With an XC file as ``--queries`` (a model trained on feature vectors), each test point is
answered alone by ``Predictor.predict_topk`` in process; there is no HTTP service for those.

Takes the first ``--n`` queries of a query log (the text before the tab), answers each one
alone (top ``--k``) with ``Searcher.search`` after ``--warmup`` queries, then again through
``experiments.serve`` (uvicorn on a free local port, one ``GET /search`` per query with
urllib), and prints p50 / p95 / p99 of both. Featurizing the text is included in both. The
service's own ``latency_ms`` (time inside the handler) is reported too, so the HTTP overhead
is the difference. Writes OUT/serve_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
import urllib.parse
import urllib.request

import numpy as np


def percentiles(ms: list[float]) -> dict[str, float]:
  a = np.asarray(ms)
  return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
          "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def stages(predictor, queries, k: int, featurizer=None) -> dict[str, float]:
  """Median ms of each stage of a single query, timed one stage at a time over ``queries``
  (text with ``featurizer``, else CSR rows): featurize, pack (the padded batch on the
  host), device (the one jitted call, on a batch already on the device), and whole (
  ``predict_topk`` from features, which adds the transfer and the Python around the call).
  """
  import jax
  import scipy.sparse as sp

  from mach_jax.data import batching
  from mach_jax.predictor import query_width
  t = {"featurize": [], "pack": [], "device": [], "whole": []}
  ev = predictor.config.eval
  fused = predictor._fused_fn((1, ev.decode, ev.candidates_m), k, ev.estimator)
  dense = predictor.config.model.dense_input
  for q in queries:
    t0 = time.perf_counter()
    X = featurizer.transform([q]) if featurizer is not None else sp.csr_matrix(q)
    t1 = time.perf_counter()
    batch = batching.pack_features(X, 1, query_width(X.nnz), dense=dense)
    t2 = time.perf_counter()
    on_device = jax.device_put(batch)
    jax.block_until_ready(on_device)
    t3 = time.perf_counter()
    jax.block_until_ready(fused(predictor.params, on_device))
    t4 = time.perf_counter()
    predictor.predict_topk(X, k=k)
    t5 = time.perf_counter()
    for name, dt in (("featurize", t1 - t0), ("pack", t2 - t1), ("device", t4 - t3),
                     ("whole", t5 - t4)):
      t[name].append(dt * 1e3)
  return {name: float(np.median(v)) for name, v in t.items()}


def width_ab(predictor, rows, k: int) -> dict[str, dict[str, float]]:
  """Interleaved A/B of two padding rules for a query's nonzeros: every row answered by
  both (power of two; ``predictor.query_width``), in alternating order, each time the
  packing, the one jitted program and the copy back."""
  import jax

  from mach_jax.data import batching
  from mach_jax.predictor import query_width
  ev = predictor.config.eval
  fused = predictor._fused_fn((1, ev.decode, ev.candidates_m), k, ev.estimator)
  rules = {"power_of_two": lambda n: batching.next_pow2(n, minimum=32),
           "query_width": query_width}
  for rule in rules.values():  # Compile every width either rule meets.
    for X in rows:
      jax.block_until_ready(fused(predictor.params, batching.pack_features(X, 1, rule(X.nnz))))
  ms = {name: [] for name in rules}
  for i, X in enumerate(rows):
    for name, rule in (rules.items() if i % 2 else reversed(rules.items())):
      t0 = time.perf_counter()
      scores, classes = fused(predictor.params, batching.pack_features(X, 1, rule(X.nnz)))
      np.asarray(scores), np.asarray(classes)
      ms[name].append((time.perf_counter() - t0) * 1e3)
  return {name: percentiles(v) for name, v in ms.items()}


def layout_ab(path: str, rows, k: int) -> dict[str, dict[str, float]]:
  """Interleaved A/B of the input table's serving layout: every row answered by
  ``predict_topk`` of a Predictor holding the table as trained ([R, D, H]) and of one
  holding it feature-major ([D, R * H]), in alternating order."""
  from mach_jax.predictor import Predictor
  predictors = {"as_trained": Predictor.load(path, feature_major=False),
                "feature_major": Predictor.load(path)}
  for p in predictors.values():
    p.warm_up(k=k)
  ms = {name: [] for name in predictors}
  for i, X in enumerate(rows):
    for name, p in (predictors.items() if i % 2 else reversed(predictors.items())):
      t0 = time.perf_counter()
      p.predict_topk(X, k=k)
      ms[name].append((time.perf_counter() - t0) * 1e3)
  return {name: percentiles(v) for name, v in ms.items()}


def print_stages(s: dict[str, float]) -> None:
  print("stages, median ms: " + "  ".join(f"{k} {v:.3f}" for k, v in s.items()))


def _is_xc(path: str) -> bool:
  """Whether ``path`` starts with an XC header (three integers) rather than a query."""
  import gzip
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    line = f.readline()
  first = line.split()
  return "\t" not in line and len(first) == 3 and all(t.isdigit() for t in first)


def xc_latency(args) -> None:
  """In-process single-point latency of a model trained on XC features."""
  from mach_jax import bundle
  from mach_jax.data.xc import read_xc
  from mach_jax.predictor import Predictor
  predictor = Predictor.load(os.path.join(args.workdir, bundle.BUNDLE_DIR))
  X = read_xc(args.queries).X[:args.n + args.warmup]
  predictor.warm_up(k=args.k)
  for i in range(args.warmup):
    predictor.predict_topk(X[i], k=args.k)
  ms = []
  for i in range(args.warmup, X.shape[0]):
    t0 = time.perf_counter()
    predictor.predict_topk(X[i], k=args.k)
    ms.append((time.perf_counter() - t0) * 1e3)
  rows = [X[i] for i in range(args.warmup, X.shape[0])]
  out = {"workdir": args.workdir, "k": args.k, "K": predictor.spec.K,
         "feature_major": predictor.feature_major, "in_process_ms": percentiles(ms),
         "stages_ms": stages(predictor, rows, args.k)}
  if args.ab_widths:
    out["width_ab_ms"] = width_ab(predictor, rows, args.k)
  if args.ab_layout:
    out["layout_ab_ms"] = layout_ab(os.path.join(args.workdir, bundle.BUNDLE_DIR), rows,
                                    args.k)
  for ab in ("width_ab_ms", "layout_ab_ms"):
    for name, p in out.get(ab, {}).items():
      print(f"{name:>14}: p50 {p['p50']:7.2f}  p95 {p['p95']:7.2f}  p99 {p['p99']:7.2f}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "serve_latency.json"), "w") as f:
    json.dump(out, f, indent=2)
  p = out["in_process_ms"]
  print(f"in_process_ms: p50 {p['p50']:7.2f}  p95 {p['p95']:7.2f}  p99 {p['p99']:7.2f}  "
        f"({p['n']} points)")
  print_stages(out["stages_ms"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--queries", required=True, help="a query log (query<TAB>ids)")
  parser.add_argument("--n", type=int, default=1000)
  parser.add_argument("--warmup", type=int, default=50)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--out", default="runs/serve_latency")
  parser.add_argument("--ab_widths", action="store_true",
                      help="XC models: also an interleaved A/B of the query padding rules")
  parser.add_argument("--ab_layout", action="store_true",
                      help="XC models: also an interleaved A/B of the input table's layout "
                           "(as trained, feature-major)")
  args = parser.parse_args()

  if _is_xc(args.queries):
    return xc_latency(args)
  import uvicorn

  from experiments import serve
  from mach_jax.search import Searcher
  with open(args.queries, encoding="utf-8") as f:
    queries = [line.split("\t")[0] for _, line in zip(range(args.n + args.warmup), f)]
  searcher = Searcher.load(args.workdir)
  searcher.predictor.warm_up(k=args.k)
  for q in queries[:args.warmup]:
    searcher.search([q], k=args.k)
  timed = queries[args.warmup:]
  inproc = []
  for q in timed:
    t0 = time.perf_counter()
    searcher.search([q], k=args.k)
    inproc.append((time.perf_counter() - t0) * 1e3)

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(serve.make_app(searcher), host="127.0.0.1",
                                         port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.05)
  http, handler = [], []
  for q in timed:
    if not q.strip():
      continue  # The service refuses an empty query (400); Searcher answers it.
    url = f"http://127.0.0.1:{port}/search?" + urllib.parse.urlencode({"q": q, "k": args.k})
    t0 = time.perf_counter()
    with urllib.request.urlopen(url) as r:
      body = json.loads(r.read())
    http.append((time.perf_counter() - t0) * 1e3)
    handler.append(body["latency_ms"])
  server.should_exit = True
  thread.join(timeout=10)

  out = {"workdir": args.workdir, "k": args.k, "K": searcher.predictor.spec.K,
         "in_process_ms": percentiles(inproc), "http_ms": percentiles(http),
         "handler_ms": percentiles(handler),
         "stages_ms": stages(searcher.predictor, timed, args.k, searcher.featurizer)}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "serve_latency.json"), "w") as f:
    json.dump(out, f, indent=2)
  for name in ("in_process_ms", "handler_ms", "http_ms"):
    p = out[name]
    print(f"{name:>14}: p50 {p['p50']:7.2f}  p95 {p['p95']:7.2f}  p99 {p['p99']:7.2f}  "
          f"({p['n']} queries)")
  print_stages(out["stages_ms"])


if __name__ == "__main__":
  main()
