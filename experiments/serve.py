"""A search service over a model trained on text: JSON for programs, a page for people.

    pip install -e ".[serve]"
    python -m experiments.serve --workdir runs/products --port 8080

    curl 'http://127.0.0.1:8080/search?q=usb+c+charger&k=5'
    # {"query": "usb c charger", "k": 5, "hits": [{"id": 12, "title": "...", "score": ...}],
    #  "latency_ms": 1.9}

``GET /`` is a page with a search box (``/?q=...&k=...`` shows the results, rendered on the
server: no script). Bad input is answered with 400 and a JSON ``error`` (an empty or too
long query, a ``k`` that is not a decimal integer in [1, min(100, the model's largest k)]: K, or
fewer under candidate decoding, which may also answer fewer hits); the server binds to
127.0.0.1 unless ``--host`` says otherwise. Built on Starlette and served by uvicorn (the
``serve`` extra); ``make_app`` is what the tests start.
"""

from __future__ import annotations

import html
import re
import threading
import time

from absl import app, flags, logging

from experiments.refusals import refusing
from mach_jax.search import Searcher

MAX_K = 100

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (or a model folder).")
_CATALOGUE = flags.DEFINE_string("catalogue", None, "Titles (default: the config's; "
                                  "'': none, ids only).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to bind (127.0.0.1: this machine).")
_PORT = flags.DEFINE_integer("port", 8080, "TCP port.")


class BadRequest(ValueError):
  """Input the service refuses with 400; the message says what to change."""


def parse(params, searcher: Searcher) -> tuple[str, int]:
  """(query, k) from request parameters, or BadRequest."""
  query = params.get("q", "")
  if not query.strip():
    raise BadRequest("q is empty: pass the query text, e.g. /search?q=usb+c+charger")
  limit = searcher.predictor.config.data.featurizer.max_chars
  if len(query) > limit:
    raise BadRequest(f"q has {len(query)} characters; at most {limit} are accepted")
  top = min(MAX_K, searcher.predictor.max_k())
  raw_k = params.get("k", "10")
  if not re.fullmatch(r"[0-9]{1,9}", raw_k):  # (Not int(): it reads '1_0', ' 5', '٣'.)
    raise BadRequest(f"k={raw_k[:20]!r} is not an integer in [1, {top}]")
  k = int(raw_k)
  if not 1 <= k <= top:
    raise BadRequest(f"k={k} is outside [1, {top}]")
  return query, k


def search(searcher: Searcher, query: str, k: int) -> dict:
  t0 = time.perf_counter()
  hits = searcher.search([query], k=k)[0]
  ms = (time.perf_counter() - t0) * 1e3
  return {"query": query, "k": k, "latency_ms": round(ms, 3),
          "hits": [{"id": int(h.id), "title": h.title, "score": float(h.score)} for h in hits]}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mach-jax search</title>
<style>body{{font-family:sans-serif;max-width:46em;margin:2em auto}}
input[name=q]{{width:30em}} td{{padding:.15em .6em}} .err{{color:#a00}}</style></head>
<body><h1>mach-jax search</h1>
<form action="/" method="get"><input name="q" value="{q}" autofocus
 placeholder="what are you looking for?"> top <input name="k" value="{k}" size="3">
 <button type="submit">Search</button></form>
{body}
<p><small>{model}</small></p></body></html>"""


def render(searcher: Searcher, params) -> tuple[str, int]:
  """The page for ``params`` (empty: just the box), and its HTTP status."""
  q, k = params.get("q", ""), params.get("k", "10")
  body, status = "", 200
  if "q" in params:
    try:
      result = search(searcher, *parse(params, searcher))
      rows = "".join(f"<tr><td>{i}</td><td>{h['id']}</td><td>{html.escape(h['title'])}</td>"
                     f"<td>{h['score']:.4f}</td></tr>"
                     for i, h in enumerate(result["hits"], start=1))
      body = (f"<p>{len(result['hits'])} results in {result['latency_ms']:.1f} ms</p>"
              f"<table><tr><th>#</th><th>id</th><th>title</th><th>score</th></tr>{rows}"
              "</table>")
    except BadRequest as e:
      body, status = f'<p class="err">{html.escape(str(e))}</p>', 400
  model = html.escape(f"{searcher.predictor.path}: K = {searcher.predictor.spec.K:,} items")
  return PAGE.format(q=html.escape(q), k=html.escape(k), body=body, model=model), status


def make_app(searcher: Searcher):
  """The Starlette application answering ``/`` and ``/search`` from ``searcher``."""
  from starlette.applications import Starlette
  from starlette.concurrency import run_in_threadpool
  from starlette.responses import HTMLResponse, JSONResponse
  from starlette.routing import Route
  lock = threading.Lock()  # One query at a time through the model: its caches are shared.

  def locked(fn, *args):
    with lock:
      return fn(*args)

  async def search_endpoint(request):
    try:
      query, k = parse(request.query_params, searcher)
    except BadRequest as e:
      return JSONResponse({"error": str(e)}, status_code=400)
    return JSONResponse(await run_in_threadpool(locked, search, searcher, query, k))

  async def page(request):
    text, status = await run_in_threadpool(locked, render, searcher, request.query_params)
    return HTMLResponse(text, status_code=status)

  return Starlette(routes=[Route("/search", search_endpoint), Route("/", page)])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    import uvicorn
  except ImportError:
    raise app.UsageError('the service needs the serve extra: pip install -e ".[serve]"') \
        from None
  with refusing("--workdir", OSError, ValueError):  # No model, a damaged one, no catalogue.
    searcher = Searcher.load(_WORKDIR.value, _CATALOGUE.value)
  searcher.predictor.warm_up(k=10)  # Compile before the first request, not during it.
  logging.info("serving %s on http://%s:%d", _WORKDIR.value, _HOST.value, _PORT.value)
  uvicorn.run(make_app(searcher), host=_HOST.value, port=_PORT.value, log_level="warning")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
