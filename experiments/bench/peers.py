"""mach-jax against napkinXC, omikuji and PECOS on the same files, measured the same way.

    python -m experiments.bench.peers --datasets bibtex,delicious,corel5k,wordnet --out runs/peers

Systems, each trained and timed in its own process on 2 cores (prediction: the whole test
set in one call, timed on the second of two passes, then single queries):
  mach          mach-jax with the set's tuned config (experiments/configs/<set>.py), or with
                its get_config(VARIANT) by --variant (the mach systems and their points)
  mach_text     mach-jax's default text config (experiments/configs/text.py) on the raw text
                of a set the repository builds (debian, foldoc, wordnet): its query logs train.tsv /
                test.tsv and catalogue, the test lines in the XC test file's order (checked);
                nothing tuned to the set. --text_epochs caps its epochs (0: the config's);
                its training time is the selection run's and the refit's together
  full_softmax  the same network with a K-way output layer (model.hash_family=identity)
  napkinxc      napkinXC PLT, loss="l2"
  omikuji       omikuji (Parabel-style trees), default hyper-parameters
  pecos         PECOS XR-Linear, PIFA label embedding + hierarchical k-means
  mach@NAME     mach-jax with the set's config changed by a --point (repeatable):
                --point "in16k: model.input_dim=16384" runs the system mach@in16k; the
                points run after --systems, and experiments.bench.frontier plots them all
  mach_text@NAME  the same for mach_text, by --text_point

--text_set FIELD=VALUE (repeatable) changes mach_text and every mach_text@NAME point alike
(e.g. a smaller feature hash for a quick run: --text_set data.featurizer.num_features=4096).

--text_config names the config mach_text and its points start from (default text;
"products:hashed_input" calls experiments/configs/products.py's get_config("hashed_input")):
a set written by experiments.datasets.query_xc (the synthetic catalogue's query log and its
XC files) runs with --text_config products and --data_root runs/data.

The peers run in their own venv (default .venv-peers, created on first use: libpecos needs
numpy<2 and scipy<1.14 and is installed with --no-deps to avoid pulling torch); mach_jax
never imports them. Every system returns top-5 label ids for the test file and all metrics
are computed here by mach_jax.metrics. Data: ../shared/data/<set>/{train,test}.txt.gz, or
--data_root; wordnet, debian and foldoc from runs/data/<set> (--built_root), built there first
when missing (wordnet needs Debian's wordnet-base; debian the apt lists, docs/debian.md;
foldoc Debian's dict-foldoc).
Writes OUT/results.csv and OUT/results.md, whose parameter column is checked against the
formula R·(D·H + H + H·B + B). With --predict_only it trains nothing: each system loads the
model the earlier run saved under OUT and times prediction again, side by side; the table
(OUT/predict.md) says whether each reloaded model gives the top 5 it gave when trained.
A mach-jax system's model MB is also given for its folder with the input table stored as
int8 (``experiments.quantize``; docs/serving.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time

from experiments.bench import workers
from experiments.bench.peer_worker import PREDS
from mach_jax import provenance

SYSTEMS = ("mach", "full_softmax", "mach_text", "napkinxc", "omikuji", "pecos")
MACH_SYSTEMS = ("mach", "full_softmax", "mach_text")
PEER_PACKAGES = ["numpy<2", "scipy<1.14", "scikit-learn", "napkinxc==0.7.2", "omikuji==0.5.2"]
PECOS = "libpecos==1.2.8"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SINGLE_QUERIES = 200


def parse_set(item: str) -> tuple[str, object]:
  """'optimizer.learning_rate=3e-3' -> ('optimizer.learning_rate', 0.003)."""
  import ast

  field, sep, value = item.partition("=")
  if not sep or not field:
    raise SystemExit(f"--set: expected field=value, got {item!r}")
  try:
    return field, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return field, value  # A bare string such as murmur.


def parse_point(text: str, system: str = "mach") -> tuple[str, list[str]]:
  """'in16k: model.input_dim=16384 model.R=8' -> ('mach@in16k', [field=value, ...])."""
  name, sep, rest = text.partition(":")
  name, sets = name.strip(), rest.split()
  if not sep or not name or not sets or not all(c.isalnum() or c in "-_." for c in name):
    raise SystemExit(f"--point: expected 'NAME: field=value ...' (NAME of letters, digits, "
                     f"-_.), got {text!r}")
  for item in sets:
    parse_set(item)  # Fail before any run.
  return f"{system}@{name}", sets


def ensure_peers_venv(path: str) -> str:
  """The peers' python, creating the venv on first use."""
  python = os.path.join(path, "bin", "python")
  probe = "import napkinxc, omikuji, pecos.xmc.xlinear.model"
  if os.path.exists(python) and subprocess.run([python, "-c", probe],
                                               capture_output=True).returncode == 0:
    return python
  subprocess.run([sys.executable, "-m", "venv", path], check=True)
  pip = [python, "-m", "pip", "install", "--quiet"]
  subprocess.run(pip + PEER_PACKAGES, check=True)
  subprocess.run(pip + ["--no-deps", PECOS], check=True)
  return python


BUILT = {"wordnet": "experiments.datasets.wordnet",  # Sets the repository builds itself.
         "debian": "experiments.datasets.debian",
         "foldoc": "experiments.datasets.foldoc"}


def data_paths(root: str, built_root: str, name: str) -> tuple[str, str]:
  """(train, test) of a set: ``root/<name>`` or, for a built set, ``built_root/<name>``
  (built there first when missing)."""
  folder = os.path.join(built_root if name in BUILT else root, name)
  paths = tuple(os.path.join(folder, f"{split}.txt.gz") for split in ("train", "test"))
  if name in BUILT and not all(map(os.path.exists, paths)):
    subprocess.run([sys.executable, "-m", BUILT[name], "--out", folder], check=True, cwd=ROOT)
  for p in paths:
    if not os.path.exists(p):
      raise SystemExit(f"{p}: not found (set --data_root)")
  return paths


def mach_worker(args) -> dict:
  """Train mach-jax (or its full softmax) on one set, then time prediction; own process."""
  import numpy as np
  from absl import logging

  from experiments import sweep
  from mach_jax import model as model_lib, train
  from mach_jax.data.xc import read_xc
  from mach_jax.predictor import Predictor

  logging.set_verbosity(logging.WARNING)
  spec = __import__(f"experiments.configs.{args.dataset}", fromlist=["get_config"])
  config = spec.get_config(args.variant) if args.variant else spec.get_config()
  config.data.train, config.data.test = args.train, args.test
  config.train.progress_bar = False
  config.eval.estimators = (config.eval.estimator,)
  if args.system == "full_softmax":
    config.model.hash_family = "identity"
  config = sweep.apply(config, dict(parse_set(item) for item in args.set or ()))
  workdir = os.path.join(args.out, "run")
  if not args.predict_only:
    results = train.train_and_evaluate(config, workdir)
  predictor = Predictor.load(os.path.join(workdir, "model"))
  X = read_xc(args.test).X
  # Compile before timing: one untimed pass over the test set compiles every batch layout it
  # meets, as every system's batch figure is its second pass (peer_worker); warm_up the
  # widths of the single queries timed.
  predictor.predict_topk(X, 5)
  n = min(SINGLE_QUERIES, X.shape[0])
  predictor.warm_up(k=5, max_nnz=int(np.diff(X.indptr[:n + 1]).max()))
  t0 = time.perf_counter()
  _, preds = predictor.predict_topk(X, 5)
  batch_ms = 1e3 * (time.perf_counter() - t0) / X.shape[0]
  t0 = time.perf_counter()
  for i in range(n):
    predictor.predict_topk(X[i:i + 1], 5, batch_size=1)
  single_ms = 1e3 * (time.perf_counter() - t0) / n
  np.save(os.path.join(args.out, PREDS[args.predict_only]), preds)
  if args.predict_only:
    return predict_only_result(batch_ms, single_ms)
  # The memory arithmetic, R·(D·H + H + H·B + B) with one hidden layer, against the count of
  # the trained parameters (the full softmax is R = 1, B = K; with an input hash D is each
  # repetition's input_dim; a shared input layer counts D·H + H once).
  spec, hidden = results["hash_spec"], tuple(config.model.hidden)
  D = spec.get("input_dim") or X.shape[1]
  formula = model_lib.num_params_formula(D, hidden, spec["B"], spec["R"])
  if config.model.shared_input:
    formula -= (spec["R"] - 1) * (D * hidden[0] + hidden[0])
  if formula != results["num_params"]:
    raise SystemExit(f"{args.system} on {args.dataset}: {results['num_params']} parameters "
                     f"counted, {formula} by the formula")
  widths = "·".join(str(w) for w in (D, *hidden, spec["B"]))
  if config.model.shared_input:
    widths += f", input layer {D}·{hidden[0]} shared"
  return {"train_s": results["train_seconds"], "params_formula": f"{spec['R']}x({widths})",
          "predict_ms_per_query_batch": batch_ms, "predict_ms_per_query_single": single_ms,
          "model_mb": results["bundle_bytes"] / 2**20,
          "peak_rss_mb": provenance.peak_rss_bytes() / 2**20,  # Before int8_mb's copy.
          "model_mb_int8": int8_mb(os.path.join(workdir, "model")),
          "num_params": results["num_params"]}


def int8_mb(model_dir: str) -> float | None:
  """MiB of the model folder with its input table stored as int8 (``experiments.quantize``;
  written to a temporary folder and removed), or None for a model without a table."""
  import tempfile

  from mach_jax import bundle
  with tempfile.TemporaryDirectory() as tmp:
    try:
      return bundle.quantize(model_dir, os.path.join(tmp, "int8"))[1] / 2**20
    except ValueError:  # A dense input layer.
      return None


def predict_only_result(batch_ms: float, single_ms: float) -> dict:
  return {"predict_ms_per_query_batch": batch_ms, "predict_ms_per_query_single": single_ms,
          "peak_rss_mb": provenance.peak_rss_bytes() / 2**20}


def text_files(test: str) -> tuple[str, str, str]:
  """(train log, test log, catalogue) beside a built set's XC test file."""
  folder = os.path.dirname(test)
  logs = [os.path.join(folder, f"{split}.tsv") for split in ("train", "test")]
  catalogue = [os.path.join(folder, n) for n in ("items.tsv", "labels.tsv")
               if os.path.exists(os.path.join(folder, n))]
  missing = [p for p in logs if not os.path.exists(p)] + ([] if catalogue else
                                                          [f"{folder}/items.tsv|labels.tsv"])
  if missing:
    raise SystemExit(f"mach_text: {', '.join(missing)} not found: mach_text runs on the sets "
                     f"the repository builds ({', '.join(BUILT)}), which write query logs")
  return logs[0], logs[1], catalogue[0]


def mach_text_worker(args) -> dict:
  """Train the default text config on a built set's query logs, predict the top 5 of each
  test query from its text; own process."""
  import numpy as np
  from absl import logging

  from experiments import sweep
  from mach_jax import train
  from mach_jax.data.xc import read_xc
  from mach_jax.search import Searcher, read_queries

  logging.set_verbosity(logging.WARNING)
  train_log, test_log, catalogue = text_files(args.test)
  name, _, variant = args.text_config.partition(":")
  module = __import__(f"experiments.configs.{name}", fromlist=["get_config"])
  config = module.get_config(variant) if variant else module.get_config()
  config.data.update(train=train_log, test=test_log, catalogue=catalogue)
  config.train.progress_bar = False
  config.eval.estimators = (config.eval.estimator,)
  if args.text_epochs:
    config.train.num_epochs = args.text_epochs
  config = sweep.apply(config, dict(parse_set(item) for item in args.set or ()))
  Y = read_xc(args.test).Y
  queries = read_queries(test_log)
  labels = [sorted({int(i) for i in line.rstrip("\n").split("\t")[1].split(",") if i})
            for line in open(test_log, encoding="utf-8")]
  if len(queries) != Y.shape[0] or any(
      labels[i] != sorted(Y.indices[Y.indptr[i]:Y.indptr[i + 1]].tolist())
      for i in range(Y.shape[0])):
    raise SystemExit(f"{test_log}: its lines are not {args.test}'s points in the same order "
                     "with the same labels; rebuild the set")
  workdir = os.path.join(args.out, "run")
  if not args.predict_only:
    results = train.train_and_evaluate(config, workdir)
  searcher = Searcher.load(workdir)
  # Compile before timing: every batch layout of the test set (an untimed pass; every
  # system's batch figure is its second pass) and every width the timed single queries
  # take (Predictor.warm_up).
  searcher.search(queries, 5)
  n = min(SINGLE_QUERIES, len(queries))
  widest = int(np.diff(searcher.featurizer.transform(queries[:n]).indptr).max())
  searcher.predictor.warm_up(k=5, max_nnz=widest)
  # The timed pass is Searcher.search's text -> features -> top k, its featurizing (the
  # part the peers were spared) timed within it.
  t0 = time.perf_counter()
  X = searcher.featurizer.transform(queries)
  t1 = time.perf_counter()
  preds = np.asarray(searcher.predictor.predict_topk(X, k=5)[1])
  batch_ms = 1e3 * (time.perf_counter() - t0) / len(queries)
  featurize = {"featurize_ms_per_query_batch": 1e3 * (t1 - t0) / len(queries)}
  t0 = time.perf_counter()
  for q in queries[:n]:
    searcher.search(q, 5, batch_size=1)
  single_ms = 1e3 * (time.perf_counter() - t0) / n
  np.save(os.path.join(args.out, PREDS[args.predict_only]), preds)
  if args.predict_only:
    return {**predict_only_result(batch_ms, single_ms), **featurize}
  spec = results["hash_spec"]
  widths = "·".join(str(w) for w in (spec.get("input_dim") or config.data.featurizer.num_features,
                                     *config.model.hidden, spec["B"]))
  refit = results.get("refit") or {}  # A refit's time includes its selection run's.
  return {"train_s": results["train_seconds"] + refit.get("select_train_seconds", 0.0),
          "params_formula": f"{spec['R']}x({widths})",
          "predict_ms_per_query_batch": batch_ms, "predict_ms_per_query_single": single_ms,
          **featurize, "model_mb": results["bundle_bytes"] / 2**20,
          "peak_rss_mb": provenance.peak_rss_bytes() / 2**20,  # Before int8_mb's copy.
          "model_mb_int8": int8_mb(os.path.join(workdir, "model")),
          "num_params": results["num_params"], "epochs": refit.get("epochs") or (
              results["selected"]["epoch"] if results.get("selected") else None)}


def set_systems(systems: list[str], dataset: str, default: bool) -> list[str]:
  """The systems run on ``dataset``: ``systems``, less mach_text on a set without query
  logs when they are the default (--systems not given): the repository builds the sets
  with query logs (``BUILT``); on the others asking for mach_text by name fails."""
  return [s for s in systems if not (default and s == "mach_text" and dataset not in BUILT)]


def worker_env() -> dict:
  """The environment of every worker process: 2 threads, no simulated devices."""
  env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
         "MKL_NUM_THREADS": "2"}
  env.pop("XLA_FLAGS", None)
  return env


def run_system(system: str, dataset: str, train: str, test: str, out: str,
               peers_python: str, text_epochs: int = 0, predict_only: bool = False,
               sets: tuple[str, ...] = (), text_config: str = "text",
               variant: str = "") -> dict:
  """One system's row; ``sets``: the field=value changes of a mach@NAME or mach_text@NAME
  point; ``variant``: the set's config variant for the other mach-jax systems."""
  env = worker_env()
  argv = ["--system", system, "--train", train, "--test", test, "--out", out]
  argv += ["--predict_only"] * predict_only + [f"--set={item}" for item in sets]
  if system.split("@")[0] == "mach_text":
    argv += ["--text_epochs", str(text_epochs), "--text_config", text_config]
  elif variant:
    argv += ["--variant", variant]
  if system.split("@")[0] in MACH_SYSTEMS:
    return workers.run("experiments.bench.peers", argv + ["--dataset", dataset],
                       f"{system} on {dataset}", env)
  cmd = [peers_python, os.path.join(ROOT, "experiments", "bench", "peer_worker.py"), *argv]
  out_ = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
  lines = [l for l in out_.stdout.splitlines() if l.startswith("RESULT ")]
  if out_.returncode or not lines:
    raise SystemExit(f"{system} on {dataset} failed:\n{out_.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def params_cell(row: dict) -> str:
  if not row.get("num_params"):
    return "–"
  return f"{row['num_params'] / 1e6:.1f}M = {row['params_formula']}"


COLUMNS = ["dataset", "system", "P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "train_s",
           "predict_ms_per_query_batch", "featurize_ms_per_query_batch",
           "predict_ms_per_query_single", "peak_rss_mb",
           "model_mb", "model_mb_int8", "num_params", "params_formula", "changes"]


def model_cell(row: dict) -> str:
  """'265.1 (int8 74.1)' for a mach-jax folder, '43.4' for a peer's."""
  int8 = row.get("model_mb_int8")
  return f"{row['model_mb']:.1f}" + (f" (int8 {int8:.1f})" if int8 is not None else "")


def predict_cell(row: dict) -> str:
  """'batch / single' ms per query; a text system's batch also shows its featurizing."""
  featurize = row.get("featurize_ms_per_query_batch")
  batch = f"{row['predict_ms_per_query_batch']:.3f}" + (
      f" ({featurize:.3f} featurizing)" if featurize not in (None, "") else "")
  return f"{batch} / {row['predict_ms_per_query_single']:.2f}"


def machine() -> str:
  """'2026-12-07 10:42 UTC on vm (AMD EPYC, 2 cores)': when and where a table was measured."""
  return (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on {platform.node()} "
          f"({provenance.cpu_model()}, {os.cpu_count()} cores)")


def write_predict_only(out: str, rows: list[dict]) -> None:
  """OUT/predict.md: prediction re-timed from the saved models, side by side."""
  head = (f"Prediction re-timed from the models saved in {out}, measured {machine()}, "
          "each system in its own process with 2 threads.\n\n")
  lines = ["| set | system | P@1 | P@5 | predict ms/query (batch / single) | peak RSS MB | "
           "same top 5 as the training run |", "|" + "---|" * 7]
  for r in rows:
    lines.append(f"| {r['dataset']} | {r['system']} | {r['P@1']:.4f} | {r['P@5']:.4f} | "
                 f"{predict_cell(r)} | {r['peak_rss_mb']:.0f} | {r['same_top5']:.4f} |")
  with open(os.path.join(out, "predict.md"), "w") as f:
    f.write(head + "\n".join(lines) + "\n")
  print(head + "\n".join(lines))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--datasets", default="bibtex,delicious,corel5k")
  p.add_argument("--systems", default=None,
                 help="comma-separated, or '' for the --point systems alone (default: every "
                      "system that runs on the set: mach_text only on the sets the repository "
                      "builds, which have query logs)")
  p.add_argument("--out", required=True)
  p.add_argument("--data_root", default=os.path.join(ROOT, "..", "shared", "data"))
  p.add_argument("--built_root", default=os.path.join(ROOT, "runs", "data"),
                 help="where sets the repository builds (wordnet) are read or built")
  p.add_argument("--peers_venv", default=os.path.join(ROOT, ".venv-peers"))
  p.add_argument("--setup_only", action="store_true", help="only create the peers' venv")
  p.add_argument("--text_epochs", type=int, default=0,
                 help="mach_text: at most this many epochs (0: the text config's cap)")
  p.add_argument("--predict_only", action="store_true",
                 help="time prediction again with the models an earlier run saved in OUT "
                      "(trains nothing); writes OUT/predict.md")
  p.add_argument("--point", action="append", default=[],
                 help="'NAME: field=value ...': one more mach-jax system, mach@NAME, the set's "
                      "config with those changes (repeatable)")
  p.add_argument("--text_point", action="append", default=[],
                 help="'NAME: field=value ...': one more system, mach_text@NAME, mach_text's "
                      "config with those changes (repeatable)")
  p.add_argument("--text_set", action="append", default=[],
                 help="FIELD=VALUE: a change to mach_text and every mach_text@NAME point "
                      "(repeatable), listed in the table's changes")
  p.add_argument("--text_config", default="text",
                 help="the config of mach_text and its points: experiments/configs/<NAME>.py, "
                      "or NAME:VARIANT for get_config(VARIANT)")
  p.add_argument("--variant", default="",
                 help="mach, full_softmax and the mach@NAME points: the set's config variant, "
                      "experiments/configs/<set>.py's get_config(VARIANT)")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--set", action="append", help=argparse.SUPPRESS)
  p.add_argument("--system", help=argparse.SUPPRESS)
  p.add_argument("--dataset", help=argparse.SUPPRESS)
  p.add_argument("--train", help=argparse.SUPPRESS)
  p.add_argument("--test", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    text = args.system.split("@")[0] == "mach_text"
    workers.emit(mach_text_worker(args) if text else mach_worker(args))
    return
  systems = (list(SYSTEMS) if args.systems is None
             else [s for s in args.systems.split(",") if s])
  unknown = set(systems) - set(SYSTEMS)
  if unknown:
    raise SystemExit(f"--systems: unknown {sorted(unknown)}; choose from {SYSTEMS}")
  points = dict([parse_point(p) for p in args.point] +
                [parse_point(p, "mach_text") for p in args.text_point])
  if len(points) < len(args.point) + len(args.text_point):
    raise SystemExit("--point: two points share a NAME")
  for item in args.text_set:
    parse_set(item)  # Fail before any run.
  systems += list(points)
  peers_python = None
  if args.setup_only or any(s not in MACH_SYSTEMS and s not in points for s in systems):
    peers_python = ensure_peers_venv(args.peers_venv)
  if args.setup_only:
    print(peers_python)
    return

  import numpy as np

  from mach_jax import metrics
  from mach_jax.data.xc import read_xc

  os.makedirs(args.out, exist_ok=True)

  def base(system):
    return (f"experiments/configs/{args.text_config}" if system.startswith("mach_text")
            else "the set's config")

  rows = []
  for dataset in args.datasets.split(","):
    train_path, test_path = data_paths(args.data_root, args.built_root, dataset)
    train_Y, test_Y = read_xc(train_path).Y, read_xc(test_path).Y
    inv_p = 1.0 / metrics.propensities(train_Y)
    for system in set_systems(systems, dataset, args.systems is None):
      out = os.path.join(args.out, dataset, system)
      if args.predict_only and not os.path.exists(os.path.join(out, PREDS[False])):
        raise SystemExit(f"--predict_only: {out} holds no earlier run of {system}")
      sets = tuple(args.text_set if system.startswith("mach_text") else ()) + tuple(
          points.get(system, ()))
      res = run_system(system, dataset, train_path, test_path, out, peers_python,
                       args.text_epochs, args.predict_only, sets, args.text_config,
                       args.variant)
      variant = args.variant and system.split("@")[0] in ("mach", "full_softmax")
      res["changes"] = " ".join([f"variant {args.variant}"] * bool(variant) + list(sets))
      preds = np.load(os.path.join(out, PREDS[args.predict_only]), allow_pickle=False)
      m = metrics.evaluate(preds, test_Y, inv_p)
      if args.predict_only:  # The reloaded model's answers against the training run's.
        trained = np.load(os.path.join(out, PREDS[False]), allow_pickle=False)
        res["same_top5"] = float((preds == trained).all(axis=1).mean())
      rows.append({"dataset": dataset, "system": system, **m, **res})
      print({k: rows[-1].get(k) for k in COLUMNS}, flush=True)
  if args.predict_only:
    return write_predict_only(args.out, rows)
  with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  head = (f"Measured {machine()}, each system in its own process with 2 threads, one run "
          "each.\n\n")
  lines = ["| set | system | P@1 | P@3 | P@5 | nDCG@5 | PSP@5 | train s | predict ms/query "
           "(batch / single) | peak RSS MB | model MB | parameters (R x widths) |",
           "|" + "---|" * 12]
  for r in rows:
    lines.append(f"| {r['dataset']} | {r['system']} | {r['P@1']:.3f} | {r['P@3']:.3f} | "
                 f"{r['P@5']:.3f} | {r['nDCG@5']:.3f} | {r['PSP@5']:.3f} | {r['train_s']:.1f} | "
                 f"{predict_cell(r)} | {r['peak_rss_mb']:.0f} | {model_cell(r)} | "
                 f"{params_cell(r)} |")
  notes = [f"- {name}: {base(name)} with {' '.join(sets)}" for name, sets in points.items()]
  if args.text_set and any(s.startswith("mach_text") for s in systems):
    notes.insert(0, f"- mach_text and its points: with {' '.join(args.text_set)}")
  lines += [""] + notes if notes else []
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(head + "\n".join(lines) + "\n")
  print(head + "\n".join(lines))


if __name__ == "__main__":
  main()
