"""Fuzz the search service's HTTP interface against an oracle of its query grammar.

    python -m experiments.bench.fuzz_service --cases 5000 --out runs/fuzz_service

Starts ``experiments.serve`` on a free localhost port over a text model folder (default:
the checked-in ``tests/data/model_v1/text``, which decodes from candidates: its largest k
is below K) and sends each case, drawn by hypothesis, to ``/search`` and to ``/`` through a
real HTTP client. A case is a query string: ``q`` as arbitrary bytes (invalid UTF-8,
control characters, NUL, whitespace of every kind, up to past the length limit) and ``k``
as arbitrary text (signs, spaces, underscores, non-ASCII digits, the bounds and one past
them), percent-encoded, with ``q`` or ``k`` sometimes absent or given twice. The oracle
reads the query string as application/x-www-form-urlencoded (``urllib.parse.parse_qsl``,
the last value of a repeated name) and the documented rules (docs/serving.md):

  * 400 with a JSON ``error`` when ``q`` is empty or whitespace, longer than the model's
    ``max_chars``, or ``k`` is not a decimal integer in [1, min(100, ``max_k()``)];
  * else 200 with exactly the hits of ``Searcher.search(q, k)`` in process (ids, titles,
    scores), each product at most once.

Any other status (a 500) is an *unexplained crash*; a 200 where the oracle refuses, a 400
where it accepts, or other hits, a *silent change*. The page (``/``) must answer the same
status (without ``q``: 200, the empty search box). tests/test_serve.py runs a few hundred
cases; writes OUT/fuzz_service.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from experiments.bench.fuzz import SilentChange, UnexplainedCrash, report, run

K_TOKENS = ("1", "5", "10", "0", "-1", "+5", " 5", "5 ", "1_0", "05", "5.0", "1e1", "\u0663",
            "\uff15", "99", "100", "101", "", "k", "9" * 12)


def start(folder: str):
  """(base URL, searcher, server) of the service over ``folder``, on a free port."""
  import uvicorn

  from experiments import serve
  from mach_jax.search import Searcher
  searcher = Searcher.load(folder, catalogue=os.path.join(folder, "products.tsv"))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(serve.make_app(searcher), host="127.0.0.1",
                                         port=port, log_level="critical"))
  threading.Thread(target=server.run, daemon=True).start()
  deadline = time.time() + 30
  while not server.started and time.time() < deadline:
    time.sleep(0.05)
  if not server.started:
    raise RuntimeError(f"the service over {folder} did not start within 30 s")
  return f"http://127.0.0.1:{port}", searcher, server


def get(url: str) -> tuple[int, str]:
  try:
    with urllib.request.urlopen(url, timeout=60) as r:
      return r.status, r.read().decode()
  except urllib.error.HTTPError as e:
    return e.code, e.read().decode()


def query_string(draw, st, max_chars: int, top: int) -> str:
  """A percent-encoded query string of ``q`` and ``k``, each sometimes absent or twice."""
  def q_value() -> str:
    raw = draw(st.one_of(
        st.binary(max_size=30),
        st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"usb c", b"  \t ", b"\xc2\xa0\xe2\x80\x83", b"", b"\x00",
                         b"\xed\xa0\x80", b"a" * max_chars, b"a" * (max_chars + 1)])))
    return "q=" + urllib.parse.quote_from_bytes(raw, safe="")

  def k_value() -> str:
    k = draw(st.one_of(st.integers(1, top).map(str), st.integers(1, top).map(str),
                       st.sampled_from(K_TOKENS + (str(top), str(top + 1))),
                       st.text(max_size=4)))
    return "k=" + urllib.parse.quote(k.encode("utf-8", "surrogatepass"), safe="")

  parts = [q_value() for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2])))]
  parts += [k_value() for _ in range(draw(st.sampled_from([1, 1, 0, 2])))]
  return "&".join(draw(st.permutations(parts)))


def oracle(qs: str, max_chars: int, top: int) -> tuple[str, int] | None:
  """(q, k) the service must answer, or None where it must refuse with 400."""
  params = dict(urllib.parse.parse_qsl(qs, keep_blank_values=True))
  q, k = params.get("q", ""), params.get("k", "10")
  if not q.strip() or len(q) > max_chars or not re.fullmatch(r"[0-9]+", k):
    return None
  return (q, int(k)) if 1 <= int(k) <= top else None


def check(qs: str, base: str, searcher, max_chars: int, top: int) -> str:
  want = oracle(qs, max_chars, top)
  status, body = get(f"{base}/search?{qs}")
  page_status, _ = get(f"{base}/?{qs}")
  if status not in (200, 400) or page_status not in (200, 400):
    raise UnexplainedCrash(f"status {status} (page {page_status}) for {qs[:200]!r}: "
                           f"{body[:300]}")
  names = {name for name, _ in urllib.parse.parse_qsl(qs, keep_blank_values=True)}
  if page_status != (status if "q" in names else 200):  # (Without q: the empty search box.)
    raise SilentChange(f"/search answered {status}, the page {page_status}, for {qs[:200]!r}")
  if want is None:
    if status != 400:
      raise SilentChange(f"the oracle refuses {qs[:200]!r}; the service answered {status}")
    if not isinstance(json.loads(body).get("error"), str):
      raise UnexplainedCrash(f"a 400 without an error message for {qs[:200]!r}: {body[:300]}")
    return "refused"
  if status != 200:
    raise SilentChange(f"the oracle accepts {qs[:200]!r} as {want!r}; the service "
                       f"answered {status}: {body[:300]}")
  got = [(h["id"], h["title"], h["score"]) for h in json.loads(body)["hits"]]
  expected = [(h.id, h.title, h.score) for h in searcher.search([want[0]], k=want[1])[0]]
  if got != expected or len({g[0] for g in got}) != len(got):
    raise SilentChange(f"hits for {want!r} differ from the Searcher's: {got[:5]} vs "
                       f"{expected[:5]}")
  return "accepted"


def target(base: str, searcher):
  """The hypothesis case function for ``fuzz.run``."""
  from hypothesis import strategies as st

  from experiments.serve import MAX_K
  max_chars = searcher.predictor.config.data.featurizer.max_chars
  top = min(MAX_K, searcher.predictor.max_k())
  return lambda draw: check(query_string(draw, st, max_chars, top), base, searcher,
                            max_chars, top)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", type=int, default=5000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--model", default=None, help="a text model folder with products.tsv "
                      "(default: tests/data/model_v1/text)")
  parser.add_argument("--out", default="runs/fuzz_service")
  args = parser.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  folder = args.model or os.path.join(root, "tests", "data", "model_v1", "text")
  base, searcher, server = start(folder)
  try:
    row = run("search service", target(base, searcher), args.cases, args.seed)
  finally:
    server.should_exit = True
  report(row, args.out, "fuzz_service.json", ("answered", "refused"), model=folder,
         seed=args.seed)


if __name__ == "__main__":
  main()
