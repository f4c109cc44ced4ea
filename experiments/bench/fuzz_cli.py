"""Fuzz the predict and search command lines: every case answers exactly, or refuses alone.

    python -m experiments.bench.fuzz_cli --cases 500 --seed 0 --out runs/fuzz_cli

Each case is an argv drawn (seeded) from what a user may pass: the checked-in model folders
(``tests/data/model_v1``: ``xc``, R = 2, B = 8, K = 60, D = 100; ``text``, K = 200, whose
decoding is by candidates) or a missing one; an input that is well formed, malformed, of
another D, missing, empty or a folder; an output that is new, exists (its own file), is a
folder or lies in a missing folder; ``--k``, ``--estimator``, ``--decode`` and ``--m`` in
and out of range.
Every case of a tool runs through the tool's ``main`` in one process (``run_cases``: absl's
flags parsed anew each time, as ``app.run`` would). The oracle is the library in process:

  * it refuses when the case names a missing or wrong model, an input that cannot be read
    (``read_xc`` / ``read_queries`` raise, or its D is not the model's), an output that
    cannot be written, or when ``Predictor.predict_topk`` / ``Searcher.search`` refuse the
    flags; the tool must then exit 1 with a message starting ``error:`` (or absl's own for a
    flag it cannot parse), and no traceback;
  * else the tool must exit 0 and write exactly the library's top k, formatted as the tool
    documents (``id:score`` best first, one line a point or query).

A traceback is an *unexplained crash*; an answer where the oracle refuses, a refusal where
it answers, or other lines, a *silent change*. Writes OUT/fuzz_cli.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V1 = os.path.join(ROOT, "tests", "data", "model_v1")

_RUNNER = """
import json, sys, traceback
from absl import app, flags
import importlib
name, cases = sys.argv[1], json.loads(sys.stdin.read())
module = importlib.import_module(name)
out = []
for argv in cases:
  flags.FLAGS.unparse_flags()
  try:
    rest = flags.FLAGS([name, *argv])
  except flags.Error as e:  # app.run prints 'FATAL Flags parsing error: ...', status 1.
    out.append([1, f"FATAL Flags parsing error: {e}"])
    continue
  try:
    module.main(rest)
    out.append([0, ""])
  except SystemExit as e:  # What Python prints for it on stderr, and its exit status.
    out.append([1, str(e.code)] if isinstance(e.code, str) else [e.code or 0, ""])
  except app.UsageError as e:  # app.run prints the usage and the message, exit status 1.
    out.append([e.exitcode, str(e)])
  except Exception:
    out.append(["traceback", traceback.format_exc()])
print("CASES " + json.dumps(out))
"""


def run_cases(module: str, cases: list[list[str]]) -> list[tuple[int | str, str]]:
  """Run ``module``'s ``main`` once per argv of ``cases``, in one fresh process (one import
  of jax for all of them; the flags parsed anew each time). Returns, per case, (exit
  status, what Python or absl would print on stderr for it), or ("traceback", the
  traceback) for an error that would have printed one."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, "-c", _RUNNER, module], input=json.dumps(cases),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
  line = [l for l in run.stdout.splitlines() if l.startswith("CASES ")]
  if run.returncode != 0 or not line:
    raise RuntimeError(f"the runner of {module} failed: {run.stderr[-3000:]}")
  return [tuple(c) for c in json.loads(line[-1][len("CASES "):])]


# ---- Fixtures ----------------------------------------------------------------------------

def fixtures(folder: str) -> dict[str, str]:
  """The files the cases name, written into ``folder``."""
  f = {name: os.path.join(folder, name) for name in (
      "good.txt", "bad.txt", "wide.txt", "empty.txt", "queries.txt", "bad_queries.txt")}
  with open(f["good.txt"], "w") as out:
    out.write("4 100 60\n1,2 3:0.5 7:1\n4 9:1 99:2\n 5:0.25\n59 0:1 1:1 2:1\n")
  with open(f["bad.txt"], "w") as out:
    out.write("2 100 60\n1,2 3:0.5 7:1\nbad line\n")
  with open(f["wide.txt"], "w") as out:
    out.write("1 500 60\n1 450:1\n")
  with open(f["empty.txt"], "w") as out:
    out.write("0 100 60\n")
  with open(f["queries.txt"], "w") as out:
    out.write("usb c charger\n\nred sofa\tignored column\nkaffeebecher 日本\n")
  with open(f["bad_queries.txt"], "wb") as out:
    out.write(b"fine\n\xff\xfe not utf-8\n")
  f["missing"] = os.path.join(folder, "missing.txt")
  f["folder"] = folder
  return f


def draw(tool: str, rng: random.Random, f: dict, out_dir: str, i: int) -> dict:
  """A case: every field drawn from the values the tool answers, then none, one or two of
  them replaced by a value it must refuse (or may: a k above a candidate decoder's)."""
  own = os.path.join(V1, "xc" if tool == "predict" else "text")
  case = {"model": own, "output": os.path.join(out_dir, f"{tool}{i}.txt"),
          "input": f["good.txt"] if tool == "predict" else rng.choice(
              [f["queries.txt"], f["empty.txt"]]),
          "catalogue": rng.choice(["", os.path.join(V1, "text", "products.tsv")]),
          "k": rng.choice([1, 3, 5, 10, 60]), "m": rng.choice([None, None, 1, 2, 8]),
          "estimator": rng.choice([None, None, "mean", "log_mean", "min", "unbiased"]),
          "decode": rng.choice([None, None, "exact", "candidates"])}
  other = os.path.join(V1, "text" if tool == "predict" else "xc")
  bad = {"model": [other, os.path.join(out_dir, "no_model")],
         "input": [f["bad.txt"], f["wide.txt"], f["missing"], f["folder"]]
         if tool == "predict" else [f["bad_queries.txt"], f["missing"], f["folder"]],
         "output": [os.path.join(out_dir, f"existing{i}.txt"), f["folder"],
                    os.path.join(out_dir, "none", "o.txt")],
         "k": [0, -2, 61, 200, 10**9], "m": [0, -1, 9], "estimator": ["bogus", ""]}
  if tool == "search":
    bad["catalogue"] = [f["missing"], f["good.txt"]]
  for field in rng.sample(sorted(bad), rng.choice([0, 0, 1, 1, 2])):
    case[field] = rng.choice(bad[field])
  if os.path.basename(case["output"]).startswith("existing"):  # Its own: each is replaced.
    with open(case["output"], "w") as out:
      out.write("an older output\n")
  return case


def argv(tool: str, case: dict) -> list[str]:
  args = ["--model" if tool == "predict" else "--workdir", case["model"],
          "--input", case["input"], "--output", case["output"], f"--k={case['k']}"]
  if tool == "search":
    args.append(f"--catalogue={case['catalogue']}")
  for flag in ("estimator", "decode", "m"):
    if case[flag] is not None:
      args.append(f"--{flag}={case[flag]}")
  return args


# ---- The oracle: the library in process --------------------------------------------------

@functools.lru_cache(maxsize=None)
def _loaded(kind: str, path: str, catalogue: str | None = None):
  """A Predictor or a Searcher, loaded once per folder (its compiled decoders kept), or the
  error loading it raised."""
  from mach_jax.predictor import Predictor
  from mach_jax.search import Searcher
  try:
    return Predictor.load(path) if kind == "predictor" else Searcher.load(path, catalogue)
  except (OSError, ValueError) as e:
    return e


def expected(tool: str, case: dict) -> list[str] | None:
  """The lines the tool must write, or None where it must refuse."""
  from mach_jax.data.xc import read_xc
  from mach_jax.search import read_queries
  out = case["output"]
  if os.path.isdir(out) or not os.path.isdir(os.path.dirname(out)):
    return None
  try:
    if tool == "predict":
      predictor = _loaded("predictor", case["model"])
      if isinstance(predictor, Exception):
        return None
      data = read_xc(case["input"])
      if data.X.shape[1] != predictor.num_features or (
          data.num_labels != predictor.spec.K and data.Y.nnz):
        return None
      scores, ids = predictor.predict_topk(data.X, case["k"], case["estimator"],
                                           method=case["decode"], m=case["m"])
      return [" ".join(f"{c}:{s:.6g}" for c, s in zip(cr, sr) if c >= 0)
              for sr, cr in zip(scores, ids)]
    searcher = _loaded("searcher", case["model"], case["catalogue"])
    if isinstance(searcher, Exception):
      return None
    hits = searcher.search(read_queries(case["input"]), k=case["k"],
                           estimator=case["estimator"], method=case["decode"], m=case["m"])
    return [" ".join(f"{h.id}:{h.score:.6g}" for h in row) for row in hits]
  except (OSError, ValueError):
    return None


def judge(case: dict, outcome: tuple, want: list[str] | None) -> str:
  """'answered' or 'refused' when the tool agrees with the oracle, else raises."""
  code, message = outcome
  if code == "traceback":
    raise UnexplainedCrash(message[-1500:])
  if want is None:
    if code != 1 or not message.startswith(("error: ", "FATAL Flags parsing error: ")):
      raise SilentChange(f"expected a refusal alone, got exit {code}: {message[:300]!r}")
    return "refused"
  if code != 0:
    raise SilentChange(f"the library answers, the tool refused: {message[:300]!r}")
  got = _read(case["output"])
  if got is None:
    raise SilentChange(f"exit 0, and no file at {case['output']}")
  got = got.splitlines()
  if got != want:
    raise SilentChange(f"other lines: {got[:3]} against {want[:3]}")
  return "answered"


def _read(path: str) -> str | None:
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return f.read()


class SilentChange(AssertionError):
  """The tool answered where the oracle refuses, refused where it answers, or differs."""


class UnexplainedCrash(AssertionError):
  """A traceback."""


def fuzz(tool: str, cases: int, seed: int, folder: str) -> dict:
  """Draw and run ``cases`` cases of ``tool``; a row of counts, with the failing cases."""
  rng = random.Random(f"{tool}:{seed}")
  f = fixtures(folder)
  out_dir = os.path.join(folder, f"out_{tool}")
  os.makedirs(out_dir, exist_ok=True)
  drawn = [draw(tool, rng, f, out_dir, i) for i in range(cases)]
  wants = [expected(tool, c) for c in drawn]
  t0 = time.perf_counter()
  outcomes = run_cases(f"experiments.{tool}", [argv(tool, c) for c in drawn])
  seconds = time.perf_counter() - t0
  row = {"tool": tool, "cases": cases, "seed": seed, "answered": 0, "refused": 0,
         "silent": 0, "unexplained": 0, "failures": [], "seconds": round(seconds, 1)}
  for case, outcome, want in zip(drawn, outcomes, wants):
    try:
      row[judge(case, outcome, want)] += 1
    except SilentChange as e:
      row["silent"] += 1
      row["failures"].append({"argv": argv(tool, case), "silent": str(e)})
    except UnexplainedCrash as e:
      row["unexplained"] += 1
      row["failures"].append({"argv": argv(tool, case), "unexplained": str(e)})
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", type=int, default=300, help="Cases per tool.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tools", default="predict,search")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  folder = tempfile.mkdtemp(prefix="fuzz_cli_")
  try:
    rows = [fuzz(tool, args.cases, args.seed, folder) for tool in args.tools.split(",")]
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  with open(os.path.join(args.out, "fuzz_cli.json"), "w") as f:
    json.dump(rows, f, indent=2)
  for r in rows:
    print(f"{r['tool']}: {r['cases']} cases, seed {r['seed']}: {r['answered']} answered, "
          f"{r['refused']} refused, {r['silent']} silent changes, {r['unexplained']} "
          f"unexplained crashes ({r['seconds']} s)")
  if any(r["failures"] for r in rows):
    print(json.dumps([r["failures"][:5] for r in rows], indent=2))


if __name__ == "__main__":
  main()
