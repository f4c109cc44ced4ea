"""Train and time ONE peer system on one XC train/test pair (runs in the peers' venv).

    .venv-peers/bin/python experiments/bench/peer_worker.py --system omikuji \
        --train TRAIN --test TEST --out DIR

It imports only the peer (napkinxc, omikuji or libpecos), NumPy, SciPy and scikit-learn --
never mach_jax, which lives in another environment. Writes DIR/preds.npy (top-5 label ids
per test point, -1 where fewer were returned) and prints one "RESULT {json}" line with
train_s, predict_ms_per_query (batch and single query), model_mb, peak_rss_mb and the unix
times at which main() started and training ended (for time-to-target benchmarks). Metrics
are computed by the caller with mach_jax's own metric code. With --predict_only it loads the
model an earlier run saved in DIR/model, trains nothing, and writes
DIR/preds_predict_only.npy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import scipy.sparse as sp

THREADS = 2
SINGLE_QUERIES = 200  # Single-query latency is averaged over this many test points.
PREDS = {False: "preds.npy", True: "preds_predict_only.npy"}  # Top 5s, by --predict_only.


def peak_rss_mb() -> float:
  """This program's own peak RSS: VmHWM, as mach_jax.provenance.peak_rss_bytes reads it
  (ru_maxrss would count the benchmark's RSS at the fork that started this worker); this
  file imports no mach_jax, so the few lines are repeated here."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_xc(path: str):
  """(X csr float32, Y csr float32, header D, L), via scikit-learn's svmlight reader."""
  from sklearn.datasets import load_svmlight_file

  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    N, D, L = (int(t) for t in f.readline().split())
    X, y = load_svmlight_file(f, multilabel=True, n_features=D, zero_based=True)
  if X.shape[0] != N:
    raise SystemExit(f"{path}: header says N={N}, read {X.shape[0]}")
  rows = np.repeat(np.arange(len(y)), [len(l) for l in y])
  cols = np.fromiter((int(c) for l in y for c in l), np.int64, count=rows.size)
  Y = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(N, L))
  return sp.csr_matrix(X, dtype=np.float32), Y, D, L


def omikuji_copy(path: str, tmp: str) -> tuple[str, int]:
  """An uncompressed copy of the XC file ``path`` that omikuji can load, and the number of
  points left out of it: omikuji's loader refuses the whole file ("Failed to load data")
  when a point has no features (the Debian set has one such training point)."""
  out = os.path.join(tmp, "omikuji_" + os.path.basename(path).removesuffix(".gz"))
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as src:
    header = src.readline().split()
    lines = [line for line in src if ":" in line]  # Features are the id:value tokens.
  left_out = int(header[0]) - len(lines)
  with open(out, "w") as dst:
    dst.write(f"{len(lines)} {header[1]} {header[2]}\n")
    dst.writelines(lines)
  return out, left_out


def folder_mb(path: str) -> float:
  if os.path.isfile(path):
    return os.path.getsize(path) / 2**20
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**20


def top5(rows) -> np.ndarray:
  out = np.full((len(rows), 5), -1, np.int64)
  for i, r in enumerate(rows):
    r = list(r)[:5]
    out[i, :len(r)] = r
  return out


def load_saved(system: str, model_dir: str):
  """The prediction function of the model an earlier run saved in ``model_dir``."""
  if system == "napkinxc":
    from napkinxc.models import PLT
    model = PLT(model_dir, threads=THREADS)
    model.load()
    return lambda X: top5(model.predict(X, top_k=5))
  if system == "omikuji":
    import omikuji
    return omikuji_predict(omikuji.Model.load(model_dir))
  from pecos.xmc.xlinear.model import XLinearModel
  return pecos_predict(XLinearModel.load(model_dir))


def run_napkinxc(Xtr, Ytr, Xte, model_dir):
  from napkinxc.models import PLT

  model = PLT(model_dir, loss="l2", threads=THREADS)
  y_lists = [Ytr.indices[Ytr.indptr[i]:Ytr.indptr[i + 1]].tolist() for i in range(Ytr.shape[0])]
  t0 = time.perf_counter()
  model.fit(Xtr, y_lists)
  train_s = time.perf_counter() - t0
  predict = lambda X: top5(model.predict(X, top_k=5))
  return train_s, predict, model_dir


def run_omikuji(train_path, Xte, model_dir, tmp):
  import omikuji

  hp = omikuji.Model.default_hyper_param()
  loadable, left_out = omikuji_copy(train_path, tmp)
  if left_out:
    print(f"omikuji: {left_out} training points without features left out (its loader "
          "refuses them)", file=sys.stderr, flush=True)
  t0 = time.perf_counter()
  model = omikuji.Model.train_on_data(loadable, hp, n_threads=THREADS)
  train_s = time.perf_counter() - t0
  model.save(model_dir)
  return train_s, omikuji_predict(model), model_dir


def omikuji_predict(model):
  def predict(X):
    X = sp.csr_matrix(X)
    rows = []
    for i in range(X.shape[0]):
      feats = list(zip(X.indices[X.indptr[i]:X.indptr[i + 1]].tolist(),
                       X.data[X.indptr[i]:X.indptr[i + 1]].tolist()))
      rows.append([label for label, _ in model.predict(feats, top_k=5)])
    return top5(rows)
  return predict


def run_pecos(Xtr, Ytr, Xte, model_dir):
  from pecos.xmc import Indexer, LabelEmbeddingFactory
  from pecos.xmc.xlinear.model import XLinearModel

  t0 = time.perf_counter()
  label_feat = LabelEmbeddingFactory.create(Ytr, Xtr, method="pifa")
  chain = Indexer.gen(label_feat, indexer_type="hierarchicalkmeans", threads=THREADS)
  model = XLinearModel.train(Xtr, Ytr, C=chain, threads=THREADS)
  train_s = time.perf_counter() - t0
  model.save(model_dir)
  return train_s, pecos_predict(model), model_dir


def pecos_predict(model):
  def predict(X):
    P = sp.csr_matrix(model.predict(sp.csr_matrix(X), only_topk=5, threads=THREADS))
    rows = []
    for i in range(P.shape[0]):
      idx, val = P.indices[P.indptr[i]:P.indptr[i + 1]], P.data[P.indptr[i]:P.indptr[i + 1]]
      rows.append(idx[np.argsort(-val, kind="stable")].tolist())
    return top5(rows)
  return predict


def main():
  started = time.time()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--system", choices=["napkinxc", "omikuji", "pecos"], required=True)
  p.add_argument("--train", required=True)
  p.add_argument("--test", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--predict_only", action="store_true",
                 help="time the model saved in OUT/model instead of training one")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  Xte, _, _, _ = read_xc(args.test)
  model_dir = os.path.join(args.out, "model")
  with tempfile.TemporaryDirectory() as tmp:
    if args.predict_only:
      train_s, predict, saved = None, load_saved(args.system, model_dir), model_dir
    elif args.system == "omikuji":
      train_s, predict, saved = run_omikuji(args.train, Xte, model_dir, tmp)
    else:
      Xtr, Ytr, _, _ = read_xc(args.train)
      run = run_napkinxc if args.system == "napkinxc" else run_pecos
      train_s, predict, saved = run(Xtr, Ytr, Xte, model_dir)
    trained = time.time()
    predict(Xte)  # Every system is timed on its second pass over the test set, warm (and
    t0 = time.perf_counter()  # mach-jax's programs compiled: experiments/bench/peers.py).
    preds = predict(Xte)
    batch_ms = 1e3 * (time.perf_counter() - t0) / Xte.shape[0]
    n = min(SINGLE_QUERIES, Xte.shape[0])
    t0 = time.perf_counter()
    for i in range(n):
      predict(Xte[i:i + 1])
    single_ms = 1e3 * (time.perf_counter() - t0) / n
  np.save(os.path.join(args.out, PREDS[args.predict_only]), preds)
  print("RESULT " + json.dumps({
      "train_s": train_s, "started_unix_time": started, "trained_unix_time": trained,
      "predict_ms_per_query_batch": batch_ms,
      "predict_ms_per_query_single": single_ms, "model_mb": folder_mb(saved),
      "peak_rss_mb": peak_rss_mb()}), flush=True)


if __name__ == "__main__":
  main()
