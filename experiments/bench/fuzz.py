"""Fuzz every input parser against an independent reading of its grammar.

    python -m experiments.bench.fuzz --cases 10000 --out runs/fuzz

Each case is a valid file drawn by hypothesis (an XC file, plain or gzip; a query log; a
catalogue; the search CLI's ``--input`` file of queries; a model folder's ``model.json``),
then mutated at the byte level zero to three
times (bytes replaced, inserted or deleted; lines duplicated, dropped or cut; the header's
numbers changed; NaN, inf, huge numbers, non-ASCII digits and spaces, CRLF, a BOM, invalid
UTF-8, no final newline, an empty file). The parser's answer is compared with an oracle
written here from the format's grammar (docs/reliability.md), not from the parser:

  * the oracle accepts: the parser must return exactly the oracle's matrices (or queries,
    labels, titles); anything else is a *silent change*;
  * the oracle refuses at line n: the parser must raise its documented error type with a
    message that starts with ``PATH:n:`` (``PATH:`` for a file-level fault); another
    exception type, or one without the path and line, is an *unexplained crash*.

The model.json target has no line-level oracle: a mutated file must load, or be refused
with ValueError / FileNotFoundError naming the file. The test suite runs the same
properties on a few hundred cases per parser (tests/test_fuzz.py). Writes OUT/fuzz.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import tempfile
import time

import numpy as np
import scipy.sparse as sp

# ---- Valid files -------------------------------------------------------------------------

VALUES = ("1", "0.5", "-2.25e-3", "3.", ".5", "+1e2", "7", "0", "1E-1")
ODD = (b"\x00", b"\xff", b"\xc3", b",", b":", b" ", b"\t", b"\r", b"\n", b"-", b"9", b"e",
       b".", b"+")
TOKENS = (b"nan", b"inf", b"-inf", b"1e999", b"99999999999999999999", b"\xef\xbb\xbf",
          b"\r\n", b"\n", b"1:1 1:2", b",,", b"\xc2\xa0", b"\xe2\x80\x83", b"\xd9\xa3",
          b"\xc2\xb2", b"\x0b", b"\x1c", b"1_0", b"0x10", b"\t\t", b"3:", b":4", b"-1",
          b"\xed\xa0\x80")


def xc_text(draw, st) -> bytes:
  """A valid XC file as bytes (tiny: N <= 6, D <= 12, L <= 6)."""
  N, D, L = draw(st.integers(0, 6)), draw(st.integers(1, 12)), draw(st.integers(1, 6))
  sep = draw(st.sampled_from([" ", "\t", "  ", " \t"]))
  lines = [f"{N}{sep}{D}{sep}{L}"]
  for _ in range(N):
    labels = sorted(draw(st.sets(st.integers(0, L - 1), max_size=3)))
    feats = sorted(draw(st.sets(st.integers(0, D - 1), max_size=4)))
    fields = [",".join(map(str, labels))] if labels else ([""] if draw(st.booleans()) else [])
    fields += [f"{j}:{draw(st.sampled_from(VALUES))}" for j in feats]
    lines.append(sep.join(fields))
  return _join(draw, st, lines)


def log_text(draw, st, K: int) -> bytes:
  """A valid query log over K products."""
  words = st.sampled_from(["usb", "red sofa", "lämpchen", "café", "x", "", "mug 3", "日本"])
  lines = []
  for _ in range(draw(st.integers(1, 6))):
    ids = draw(st.lists(st.integers(0, K - 1), max_size=3))
    lines.append(f"{draw(words)}\t{','.join(map(str, ids))}")
  return _join(draw, st, lines)


def catalogue_text(draw, st, K: int) -> bytes:
  """A valid catalogue: ids 0..K-1 in a drawn order, each with a title."""
  order = draw(st.permutations(range(K)))
  titles = st.sampled_from(["USB-C cable", "sofa, red", "Kaffeebecher", "", "日本茶"])
  return _join(draw, st, [f"{i}\t{draw(titles)}" for i in order])


def _join(draw, st, lines: list[str]) -> bytes:
  end = "\r\n" if draw(st.booleans()) else "\n"
  text = end.join(lines) + (end if draw(st.booleans()) else "")
  return (b"\xef\xbb\xbf" if draw(st.integers(0, 9)) == 0 else b"") + text.encode()


def mutate(draw, st, raw: bytes) -> bytes:
  """Zero to three byte-level mutations of ``raw``."""
  for _ in range(draw(st.integers(0, 3))):
    kind = draw(st.sampled_from(["replace", "insert", "delete", "dup_line", "drop_line",
                                 "truncate", "header", "empty"]))
    n = len(raw)
    at = draw(st.integers(0, n))
    if kind == "replace" and n:
      raw = raw[:min(at, n - 1)] + draw(st.sampled_from(ODD)) + raw[min(at, n - 1) + 1:]
    elif kind == "insert":
      raw = raw[:at] + draw(st.sampled_from(ODD + TOKENS)) + raw[at:]
    elif kind == "delete":
      raw = raw[:at] + raw[at + draw(st.integers(1, 4)):]
    elif kind in ("dup_line", "drop_line"):
      lines = raw.split(b"\n")
      i = draw(st.integers(0, len(lines) - 1))
      lines[i:i + 1] = [lines[i]] * (2 if kind == "dup_line" else 0)
      raw = b"\n".join(lines)
    elif kind == "truncate":
      raw = raw[:at]
    elif kind == "header":
      number = draw(st.sampled_from([0, 1, 2, 7, 2**31 - 1, 2**31, 10**20]))
      raw = re.sub(rb"^[0-9]+", str(number).encode(), raw, count=1)
    elif kind == "empty":
      raw = b""
  return raw


# ---- Oracles: the grammar, read directly -------------------------------------------------

class Refused(Exception):
  """The oracle's verdict on an invalid file: the 1-based line, or None (file level)."""

  def __init__(self, line: int | None):
    super().__init__(line)
    self.line = line


F32_MAX = float(np.finfo(np.float32).max)
VALUE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def _split_lines(raw: bytes) -> list[bytes]:
  """Lines of ``raw``: split at b'\\n', the empty piece after a final newline dropped."""
  parts = raw.split(b"\n")
  return parts[:-1] if parts[-1] == b"" else parts


def _decode(part: bytes, lineno: int) -> str:
  """One line as text: UTF-8, a BOM skipped on line 1, one trailing '\\r' dropped."""
  try:
    text = part.decode("utf-8")
  except UnicodeDecodeError:
    raise Refused(lineno) from None
  text = text.removeprefix("\ufeff") if lineno == 1 else text
  return text[:-1] if text.endswith("\r") else text


def oracle_xc(raw: bytes):
  """(N, D, L, rows) with rows [(sorted labels, {feature: float32 value})], or Refused."""
  # The whole file is decoded before any line is read.
  lines = [_decode(part, i) for i, part in enumerate(_split_lines(raw), start=1)]
  header = re.fullmatch(r"[ \t]*([0-9]+)[ \t]+([0-9]+)[ \t]+([0-9]+)[ \t]*",
                        lines[0]) if lines else None
  if header is None:
    raise Refused(1)
  N, D, L = map(int, header.groups())
  if max(N, D, L) >= 2**31:
    raise Refused(1)
  rows = []
  for lineno, line in enumerate(lines[1:], start=2):
    if any(c.isspace() and c not in " \t" for c in line):
      raise Refused(lineno)
    tokens = [t for t in re.split(r"[ \t]+", line) if t]
    labels: set[int] = set()
    if tokens and ":" not in tokens[0]:
      if not re.fullmatch(r"-?[0-9]+(,-?[0-9]+)*", tokens[0]):
        raise Refused(lineno)
      for t in tokens[0].split(","):
        if not 0 <= int(t) < L:
          raise Refused(lineno)
        labels.add(int(t))
      tokens = tokens[1:]
    feats: dict[int, np.float32] = {}
    for t in tokens:
      m = re.fullmatch(r"(-?[0-9]+):(.*)", t)
      if m is None or not (VALUE.fullmatch(m.group(2)) or NON_FINITE.fullmatch(m.group(2))):
        raise Refused(lineno)
      j, v = int(m.group(1)), float(m.group(2))
      if not 0 <= j < D or j in feats or not (np.isfinite(v) and abs(v) <= F32_MAX):
        raise Refused(lineno)
      feats[j] = np.float32(v)
    rows.append((sorted(labels), feats))
  if len(rows) != N:
    raise Refused(len(lines))
  return N, D, L, rows


def oracle_log(raw: bytes, K: int, max_chars: int):
  """[(query, ids in first order, each once)], or Refused."""
  out = []
  for lineno, part in enumerate(_split_lines(raw), start=1):  # Each line decoded in turn.
    fields = _decode(part, lineno).split("\t")
    if len(fields) != 2:
      raise Refused(lineno)
    query, ids = fields
    if ids and not re.fullmatch(r"-?[0-9]+(,-?[0-9]+)*", ids):
      raise Refused(lineno)
    parsed = list(dict.fromkeys(int(t) for t in ids.split(","))) if ids else []
    if any(not 0 <= i < K for i in parsed):
      raise Refused(lineno)
    out.append((query, parsed))
  for lineno, (query, _) in enumerate(out, start=1):  # The length pass comes second.
    if len(query) > max_chars:
      raise Refused(lineno)
  if not out:
    raise Refused(None)
  return out


def oracle_catalogue(raw: bytes, K: int):
  """Titles by id, or Refused."""
  titles: dict[int, str] = {}
  for lineno, part in enumerate(_split_lines(raw), start=1):
    fields = _decode(part, lineno).split("\t")
    if len(fields) < 2 or not re.fullmatch(r"[0-9]+", fields[0]):
      raise Refused(lineno)
    i = int(fields[0])
    if i >= K or i in titles:
      raise Refused(lineno)
    titles[i] = fields[1]
  if len(titles) != K:
    raise Refused(None)
  return [titles[i] for i in range(K)]


# ---- The properties ----------------------------------------------------------------------

class SilentChange(AssertionError):
  pass


class UnexplainedCrash(AssertionError):
  pass


def _expect_refusal(e: Exception, types, path: str, verdict: Refused, raw: bytes) -> None:
  prefix = f"{path}:" if verdict.line is None else f"{path}:{verdict.line}:"
  if not isinstance(e, types) or not str(e).startswith(prefix):
    raise UnexplainedCrash(f"expected {types.__name__} starting {prefix!r}, got "
                           f"{type(e).__name__}: {str(e)[:300]} for {raw[:300]!r}") from e


def check_xc(raw: bytes, folder: str, gz: bool) -> str:
  """One XC case; returns 'accepted' or 'refused', raises on a failure of the property."""
  from mach_jax.data.xc import XCFormatError, read_xc
  path = os.path.join(folder, "case.txt.gz" if gz else "case.txt")
  with open(path, "wb") as f:
    f.write(gzip.compress(raw, mtime=0) if gz else raw)
  try:
    want = oracle_xc(raw)
  except Refused as verdict:
    try:
      read_xc(path)
    except Exception as e:  # noqa: BLE001 - the property is about which exception.
      _expect_refusal(e, XCFormatError, path, verdict, raw)
      return "refused"
    raise SilentChange(f"the oracle refuses line {verdict.line}; read_xc accepted {raw!r}")
  try:
    got = read_xc(path)
  except Exception as e:  # noqa: BLE001
    raise UnexplainedCrash(f"a valid file was refused: {type(e).__name__}: {e}; {raw!r}")
  N, D, L, rows = want
  X = sp.dok_matrix((N, D), dtype=np.float32)
  Y = sp.dok_matrix((N, L), dtype=np.float32)
  for i, (labels, feats) in enumerate(rows):
    for l in labels:
      Y[i, l] = 1
    for j, v in feats.items():
      X[i, j] = v
  nnz = sum(len(f) for _, f in rows)  # Explicit zeros count: nothing may be dropped.
  if (got.X.shape != (N, D) or got.Y.shape != (N, L) or got.X.nnz != nnz
      or (got.X != X.tocsr()).nnz or (got.Y != Y.tocsr()).nnz):
    raise SilentChange(f"read_xc's matrices differ from the oracle's for {raw!r}")
  return "accepted"


def check_log(raw: bytes, folder: str, K: int = 5, max_chars: int = 40) -> str:
  from mach_jax.data.query_log import QueryLog, QueryLogError, read_lines
  from mach_jax.data.text import TextFeaturizer
  path = os.path.join(folder, "case.tsv")
  with open(path, "wb") as f:
    f.write(raw)
  featurizer = TextFeaturizer(num_features=64, max_chars=max_chars)
  try:
    want = oracle_log(raw, K, max_chars)
  except Refused as verdict:
    try:
      QueryLog(path, featurizer, K)
    except Exception as e:  # noqa: BLE001
      _expect_refusal(e, QueryLogError, path, verdict, raw)
      return "refused"
    raise SilentChange(f"the oracle refuses line {verdict.line}; QueryLog accepted {raw!r}")
  try:
    log = QueryLog(path, featurizer, K)
    got = [(q, l) for qs, ls, _ in read_lines(path, K, 3) for q, l in zip(qs, ls)]
  except Exception as e:  # noqa: BLE001
    raise UnexplainedCrash(f"a valid log was refused: {type(e).__name__}: {e}; {raw!r}")
  counts = np.bincount([i for _, ids in want for i in ids], minlength=K)
  if got != want or log.num_points != len(want) or not np.array_equal(log.label_counts(),
                                                                       counts):
    raise SilentChange(f"the query log reads differently from the oracle: {raw!r}")
  return "accepted"


def check_catalogue(raw: bytes, folder: str, K: int = 4) -> str:
  from mach_jax.search import read_titles
  path = os.path.join(folder, "items.tsv")
  with open(path, "wb") as f:
    f.write(raw)
  try:
    want = oracle_catalogue(raw, K)
  except Refused as verdict:
    try:
      read_titles(path, K)
    except Exception as e:  # noqa: BLE001
      _expect_refusal(e, ValueError, path, verdict, raw)
      return "refused"
    raise SilentChange(f"the oracle refuses line {verdict.line}; read_titles accepted {raw!r}")
  try:
    got = read_titles(path, K)
  except Exception as e:  # noqa: BLE001
    raise UnexplainedCrash(f"a valid catalogue was refused: {type(e).__name__}: {e}; {raw!r}")
  if got != want:
    raise SilentChange(f"read_titles differs from the oracle: {got} vs {want}")
  return "accepted"


def check_queries(raw: bytes, folder: str) -> str:
  """The search CLI's ``--input`` file: each line's first tab-separated column."""
  from mach_jax.search import read_queries
  path = os.path.join(folder, "queries.txt")
  with open(path, "wb") as f:
    f.write(raw)
  try:
    want = [_decode(part, i).split("\t")[0]
            for i, part in enumerate(_split_lines(raw), start=1)]
  except Refused as verdict:
    try:
      read_queries(path)
    except Exception as e:  # noqa: BLE001
      _expect_refusal(e, ValueError, path, verdict, raw)
      return "refused"
    raise SilentChange(f"the oracle refuses line {verdict.line}; read_queries accepted {raw!r}")
  try:
    got = read_queries(path)
  except Exception as e:  # noqa: BLE001
    raise UnexplainedCrash(f"a valid query file was refused: {type(e).__name__}: {e}")
  if got != want:
    raise SilentChange(f"read_queries differs from the oracle: {got} vs {want}")
  return "accepted"


def check_model_json(raw: bytes, folder: str, source: str) -> str:
  """A model folder whose model.json is ``raw``: loads, or is refused naming the file."""
  from mach_jax import bundle
  model = os.path.join(folder, "model")
  if not os.path.isdir(model):
    shutil.copytree(source, model)
  with open(os.path.join(model, "model.json"), "wb") as f:
    f.write(raw)
  try:
    bundle.read_info(model)
  except (ValueError, FileNotFoundError) as e:
    if os.path.join(model, "model.json") not in str(e):
      raise UnexplainedCrash(f"{type(e).__name__} without the file: {e}") from e
    return "refused"
  except Exception as e:  # noqa: BLE001
    raise UnexplainedCrash(f"{type(e).__name__}: {str(e)[:300]} for {raw[:200]!r}") from e
  return "accepted"


def model_json_case(draw, st, valid: dict) -> bytes:
  """``valid`` with a few fields deleted, retyped or added, or its bytes mutated."""
  info = json.loads(json.dumps(valid))
  for _ in range(draw(st.integers(0, 3))):
    node, keys = info, []
    while isinstance(node, dict) and node and draw(st.booleans()):
      key = draw(st.sampled_from(sorted(node)))
      keys.append(key)
      if not isinstance(node[key], dict):
        break
      node = node[key]
    parent = info
    for key in keys[:-1]:
      parent = parent[key]
    if not keys or not isinstance(parent, dict):
      continue
    action = draw(st.sampled_from(["delete", "retype", "add"]))
    if action == "delete":
      parent.pop(keys[-1], None)
    elif action == "retype":
      parent[keys[-1]] = draw(st.sampled_from([None, "x", -1, 0, 1e9, [], {}, True, 2**40]))
    else:
      parent["unknown_field"] = 1
  raw = json.dumps(info).encode()
  return mutate(draw, st, raw) if draw(st.integers(0, 3)) == 0 else raw


# ---- The campaign --------------------------------------------------------------------------

def targets(folder: str, source: str):
  """{name: hypothesis test function over ``cases``} for every parser."""
  from hypothesis import strategies as st
  valid = json.load(open(os.path.join(source, "model.json")))
  return {
      "xc (plain)": (lambda draw: check_xc(mutate(draw, st, xc_text(draw, st)), folder, False)),
      "xc (gzip)": (lambda draw: check_xc(mutate(draw, st, xc_text(draw, st)), folder, True)),
      "query log": (lambda draw: check_log(mutate(draw, st, log_text(draw, st, 5)), folder)),
      "catalogue": (lambda draw: check_catalogue(
          mutate(draw, st, catalogue_text(draw, st, 4)), folder)),
      "search queries": (lambda draw: check_queries(
          mutate(draw, st, log_text(draw, st, 5)), folder)),
      "model.json": (lambda draw: check_model_json(model_json_case(draw, st, valid), folder,
                                                   source)),
  }


def run(name: str, case, cases: int, seed: int = 0) -> dict:
  """Run ``cases`` hypothesis examples of ``case``; counts of each outcome."""
  from hypothesis import HealthCheck, given, seed as hseed, settings, strategies as st
  counts = {"accepted": 0, "refused": 0}
  failures: list[str] = []

  @hseed(seed)
  @settings(max_examples=cases, deadline=None, database=None, derandomize=False,
            suppress_health_check=list(HealthCheck), phases=("generate",))
  @given(st.data())
  def prop(data):
    try:
      counts[case(data.draw)] += 1
    except (SilentChange, UnexplainedCrash) as e:
      failures.append(f"{type(e).__name__}: {e}"[:600])

  t0 = time.time()
  prop()
  return {"parser": name, "cases": counts["accepted"] + counts["refused"] + len(failures),
          **counts, "silent_changes": sum(f.startswith("Silent") for f in failures),
          "unexplained_crashes": sum(f.startswith("Unexpl") for f in failures),
          "seconds": round(time.time() - t0, 1), "first_failures": failures[:5],
          "failures": failures}


def report(row: dict, out: str, name: str, words=("accepted", "refused"), **extra) -> None:
  """Print one campaign's counts (``run``'s row) and failures; write them to OUT/NAME."""
  print(f"{row['cases']} cases: {row['accepted']} {words[0]}, {row['refused']} {words[1]}, "
        f"{row['silent_changes']} silent changes, {row['unexplained_crashes']} unexplained "
        f"crashes ({row['seconds']} s)")
  for f in row["failures"]:
    print("   ", f)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, name), "w") as f:
    json.dump({**row, **extra}, f, indent=2)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", type=int, default=10_000, help="cases per parser")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="runs/fuzz")
  args = parser.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  source = os.path.join(root, "tests", "data", "model_v1", "xc")
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for name, case in targets(folder, source).items():
      rows.append(run(name, case, args.cases, args.seed))
      r = rows[-1]
      print(f"{name:>11}: {r['cases']:>6} cases, {r['accepted']:>6} accepted, {r['refused']:>6} "
            f"refused, {r['silent_changes']} silent changes, {r['unexplained_crashes']} "
            f"unexplained crashes ({r['seconds']} s)", flush=True)
      for f in r["first_failures"]:
        print("   ", f)
  os.makedirs(args.out, exist_ok=True)
  total = {k: sum(r[k] for r in rows) for k in ("cases", "silent_changes",
                                                 "unexplained_crashes")}
  with open(os.path.join(args.out, "fuzz.json"), "w") as f:
    json.dump({"rows": rows, "total": total, "seed": args.seed}, f, indent=2)
  print(f"total: {total['cases']} cases, {total['silent_changes']} silent changes, "
        f"{total['unexplained_crashes']} unexplained crashes")


if __name__ == "__main__":
  main()
