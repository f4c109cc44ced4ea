"""Time to target: wall-clock from process start until test P@1 reaches a target, vs omikuji.

    python -m experiments.bench.speed --datasets bibtex,delicious --out runs/speed_fast
    python -m experiments.bench.speed --datasets bibtex,delicious --out runs/speed --variant ''

Targets are the best peer's P@1 in docs/design.md less 0.01 (bibtex .632, delicious .655;
``--targets name=value,...`` overrides). For every set, ``--repeats`` times, alternating:

  mach     a fresh process trains the set's config (experiments/configs/<set>.py), run r
           with seed config.seed + r (initialisation and shuffling: the runs are different
           trajectories, so "runs reaching target" says how robust the target is, and the
           median is over seeds, not over one trajectory timed thrice), and evaluates P@1
           of the config's estimator on the *whole* test set every ``--eval_every`` steps
           (and at each epoch end), stopping at the first evaluation that reaches the
           target. Time to target = the end of that evaluation - the
           spawn of the process - the time spent in periodic evaluations (reported apart, so
           how often one evaluates does not change the headline figure beyond the
           granularity of ``--eval_every`` steps).
  omikuji  experiments/bench/peer_worker.py in the peers' venv, 2 threads: the spawn of the
           process until its model is trained and saved; it reaches the target if the P@1
           of its predictions (our metric code) does.

mach-jax uses the ``fast`` variant of each set's config by default (``--variant ''`` for the
accuracy configs of the peers table). Both include interpreter start, imports and data
loading. The mach profile splits its time into startup (spawn until the worker runs),
imports (jax, flax, mach_jax), data (reading the XC files), setup (model, optimizer and
sharded state), compile (the first batch, compilation and one step) and steps; eval is the
periodic evaluations. Writes OUT/results.csv (one row per run) and OUT/results.md (medians,
and the ratio mach / omikuji of the medians). ``--set field=value`` (repeatable) changes
mach-jax's config, to measure a lever against the same target; ``--systems mach`` skips
omikuji; ``--compilation_cache DIR`` gives mach-jax a warm JAX persistent compilation cache
and ``--data_cache DIR`` its parsed-data cache (``config.data.cache_dir``), both filled by one
untimed run per set: the state of every run after the first in a sweep.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time

from experiments.bench import peers, workers

TARGETS = {"bibtex": 0.632, "delicious": 0.655}  # docs/design.md: best peer P@1 - 0.01.


def mach_worker(args) -> dict:
  """One mach-jax run to the target, in this fresh process."""
  t_main = time.time()
  from absl import logging

  from experiments import sweep
  from mach_jax import train
  t_imported = time.time()
  logging.set_verbosity(logging.WARNING)
  module = __import__(f"experiments.configs.{args.dataset}", fromlist=["get_config"])
  config = module.get_config(*([args.variant] if args.variant else []))
  config = sweep.apply(config, dict(peers.parse_set(item) for item in args.set))
  config.seed += args.repeat
  config.data.train, config.data.test = args.train, args.test
  config.train.update(progress_bar=False, target_metric="P@1", target_value=args.target)
  config.eval.update(estimators=(config.eval.estimator,), every_steps=args.eval_every,
                     every_epochs=1, subset=0)
  config.checkpoint.enabled = False
  res = train.train_and_evaluate(config, os.path.join(args.out, "run"))
  t = res["target"]
  out = {"final_P@1": res["P@1"], "reached": t["reached"], "startup_s": t_main - args.spawn,
         "import_s": t_imported - t_main, "data_s": res["data_seconds"],
         "compile_s": res["first_step_seconds"]}
  if t["reached"]:
    to_target = t["unix_time"] - args.spawn - t["periodic_eval_seconds"]
    out.update(time_to_target_s=to_target, with_eval_s=t["unix_time"] - args.spawn,
               eval_s=t["periodic_eval_seconds"], step=t["step"], epoch=t["epoch"],
               achieved=t["achieved"], steps_s=t["train_seconds"] - res["first_step_seconds"])
    out["setup_s"] = to_target - sum(out[k] for k in ("startup_s", "import_s", "data_s",
                                                      "compile_s", "steps_s"))
  return out


def cache_env(cache_dir: str) -> dict:
  """Environment of JAX's persistent compilation cache in ``cache_dir`` ('' = none).

  Every compiled program is written there (no size or compile-time floor) and read back by
  the next process that compiles the same program with the same shapes: a sweep over
  seeds, learning rates or estimators compiles once.
  """
  if not cache_dir:
    return {}
  return {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(cache_dir),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def run_mach(dataset, train, test, target, out, eval_every, sets=(), variant="",
             cache_dir="", data_cache="", repeat=0) -> dict:
  if data_cache:
    sets = [*sets, f"data.cache_dir={os.path.abspath(data_cache)}"]
  spawn = time.time()
  argv = ["--dataset", dataset, "--train", train, "--test", test, "--out", out,
          "--target", str(target), "--eval_every", str(eval_every), "--spawn", repr(spawn),
          "--repeat", str(repeat)]
  argv += [f"--set={item}" for item in sets] + [f"--variant={variant}"]
  env = {**peers.worker_env(), **cache_env(cache_dir)}
  return workers.run("experiments.bench.speed", argv, f"mach on {dataset}", env)


def run_omikuji(dataset, train, test, target, out, peers_python, test_Y) -> dict:
  import numpy as np

  from mach_jax import metrics

  spawn = time.time()
  res = peers.run_system("omikuji", dataset, train, test, out, peers_python)
  p1 = metrics.evaluate(np.load(os.path.join(out, "preds.npy"), allow_pickle=False), test_Y)["P@1"]
  return {"final_P@1": p1, "reached": p1 >= target, "achieved": p1,
          "time_to_target_s": res["trained_unix_time"] - spawn if p1 >= target else None,
          "startup_s": res["started_unix_time"] - spawn, "train_s": res["train_s"]}


COLUMNS = ["dataset", "system", "repeat", "target", "reached", "time_to_target_s", "achieved",
           "final_P@1", "startup_s", "import_s", "data_s", "setup_s", "compile_s", "steps_s",
           "eval_s", "with_eval_s", "train_s", "step", "epoch"]
PROFILE = ("startup_s", "import_s", "data_s", "setup_s", "compile_s", "steps_s", "eval_s")


def median_of(rows, key):
  values = [r[key] for r in rows if r.get(key) is not None]
  return statistics.median(values) if values else None


def table(rows: list[dict], repeats: int, sets=()) -> str:
  head = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} cores); "
          f"{repeats} runs each, mach and omikuji alternating, 2 threads each; mach-jax run r "
          "trains with the config's seed + r; times are medians over the runs that reached "
          "the target"
          + (f"; mach-jax config with {', '.join(sets)}" if sets else "") + ".\n\n")
  lines = ["| set | target P@1 | mach-jax s to target | omikuji s | ratio | mach runs reaching "
           "target | mach profile (median s): " + " / ".join(k[:-2] for k in PROFILE) + " |",
           "|" + "---|" * 7]
  for dataset in dict.fromkeys(r["dataset"] for r in rows):
    mach = [r for r in rows if r["dataset"] == dataset and r["system"] == "mach"]
    omi = [r for r in rows if r["dataset"] == dataset and r["system"] == "omikuji"]
    m, o = median_of(mach, "time_to_target_s"), median_of(omi, "time_to_target_s")
    fmt = lambda v, ran=True: ("not reached" if v is None else f"{v:.1f}") if ran else "–"
    ratio = f"{m / o:.1f}" if m is not None and o is not None else "–"
    reached = f"{sum(bool(r['reached']) for r in mach)}/{len(mach)}" if mach else "–"
    profile = " / ".join(fmt(median_of(mach, k), bool(mach)) for k in PROFILE)
    target = next(r["target"] for r in rows if r["dataset"] == dataset)
    lines.append(f"| {dataset} | {target:.3f} | {fmt(m, bool(mach))} | {fmt(o, bool(omi))} | "
                 f"{ratio} | {reached} | {profile} |")
  return head + "\n".join(lines) + "\n"


def parse_targets(text: str) -> dict[str, float]:
  targets = dict(TARGETS)
  for item in filter(None, text.split(",")):
    name, sep, value = item.partition("=")
    try:
      targets[name] = float(value)
    except ValueError:
      raise SystemExit(f"--targets: expected name=value, got {item!r}") from None
    if not sep:
      raise SystemExit(f"--targets: expected name=value, got {item!r}")
  return targets


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--datasets", default="bibtex,delicious")
  p.add_argument("--out", required=True)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--targets", default="", help="name=P@1,... (default: bibtex=.632,delicious=.655)")
  p.add_argument("--eval_every", type=int, default=20, help="steps between evaluations")
  p.add_argument("--set", action="append", default=[],
                 help="override a field of mach-jax's config, e.g. --set model.R=8 (repeatable)")
  p.add_argument("--systems", default="mach,omikuji", help="mach, omikuji or both")
  p.add_argument("--variant", default="fast",
                 help="config variant (get_config(variant)); '' for the accuracy configs")
  p.add_argument("--compilation_cache", default="",
                 help="JAX persistent compilation cache dir for mach-jax; one untimed run "
                 "per set fills it first, so the timed runs start warm, as in a sweep")
  p.add_argument("--data_cache", default="",
                 help="parsed-data cache dir for mach-jax (config.data.cache_dir), filled "
                 "by the same untimed run")
  p.add_argument("--data_root", default=os.path.join(peers.ROOT, "..", "shared", "data"))
  p.add_argument("--built_root", default=os.path.join(peers.ROOT, "runs", "data"))
  p.add_argument("--peers_venv", default=os.path.join(peers.ROOT, ".venv-peers"))
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  for hidden in ("--dataset", "--train", "--test"):
    p.add_argument(hidden, help=argparse.SUPPRESS)
  p.add_argument("--target", type=float, help=argparse.SUPPRESS)
  p.add_argument("--spawn", type=float, help=argparse.SUPPRESS)
  p.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    workers.emit(mach_worker(args))
    return
  if args.repeats < 1 or args.eval_every < 1:
    raise SystemExit("--repeats and --eval_every must be >= 1")
  targets = parse_targets(args.targets)
  datasets = args.datasets.split(",")
  missing = [d for d in datasets if d not in targets]
  if missing:
    raise SystemExit(f"no target P@1 for {missing}: pass --targets {missing[0]}=VALUE")
  systems = args.systems.split(",")
  if not systems or set(systems) - {"mach", "omikuji"}:
    raise SystemExit(f"--systems: expected mach, omikuji or both, got {args.systems!r}")
  for item in args.set:
    peers.parse_set(item)  # Fail before any run.
  peers_python = peers.ensure_peers_venv(args.peers_venv) if "omikuji" in systems else None

  from mach_jax.data.xc import read_xc

  os.makedirs(args.out, exist_ok=True)
  rows = []
  for dataset in datasets:
    train, test = peers.data_paths(args.data_root, args.built_root, dataset)
    test_Y, target = read_xc(test).Y, targets[dataset]
    if (args.compilation_cache or args.data_cache) and "mach" in systems:  # Not timed.
      run_mach(dataset, train, test, target, os.path.join(args.out, dataset, "mach_warmup"),
               args.eval_every, args.set, args.variant, args.compilation_cache, args.data_cache)
    for repeat in range(args.repeats):
      for system in systems:
        out = os.path.join(args.out, dataset, f"{system}_{repeat}")
        if system == "mach":
          res = run_mach(dataset, train, test, target, out, args.eval_every, args.set,
                         args.variant, args.compilation_cache, args.data_cache, repeat)
        else:
          res = run_omikuji(dataset, train, test, target, out, peers_python, test_Y)
        rows.append({"dataset": dataset, "system": system, "repeat": repeat, "target": target,
                     **res})
        print({k: rows[-1].get(k) for k in COLUMNS if rows[-1].get(k) is not None}, flush=True)
  with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  notes = [f"variant {args.variant or 'default'}", *args.set]
  if args.compilation_cache:
    notes.append("warm persistent compilation cache")
  if args.data_cache:
    notes.append("parsed-data cache")
  md = table(rows, args.repeats, notes)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  sys.exit(main())
