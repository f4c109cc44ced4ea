"""Search a model trained on a query log: query text in, top products out.

    python -m experiments.search --workdir runs/products "usb c charger 65w" --k 10
    python -m experiments.search --workdir runs/products --k 5 "red sofa" "kids bike"

Prints, per query, the top-k products (id, score, title) and the time it took. The
featurizer is the one saved with the model; the titles come from the catalogue named in the
training config (``--catalogue`` overrides it). The same in Python:
``mach_jax.search.Searcher.load(workdir).search(query, k)``.
"""

from __future__ import annotations

import time

from absl import app, flags, logging

from mach_jax.search import Searcher

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (or a model folder).")
_CATALOGUE = flags.DEFINE_string("catalogue", None, "products.tsv (default: the config's).")
_K = flags.DEFINE_integer("k", 10, "Products per query.")
_ESTIMATOR = flags.DEFINE_string("estimator", None, "Merge estimator (default: the model's).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  logging.set_verbosity(logging.WARNING)
  queries = argv[1:]
  if not queries:
    raise app.UsageError("give at least one query, e.g. \"usb c charger 65w\" (\"\" is allowed)")
  t0 = time.time()
  searcher = Searcher.load(_WORKDIR.value, _CATALOGUE.value)
  t1 = time.time()
  try:
    results = searcher.search(queries, k=_K.value, estimator=_ESTIMATOR.value)
  except ValueError as e:  # Too long a query, a bad --k: say so, no traceback.
    raise SystemExit(f"error: {e}") from None
  t2 = time.time()
  for query, hits in zip(queries, results):
    shown = query if len(query) <= 100 else f"{query[:100]}... ({len(query)} characters)"
    print(f"query: {shown!r}")
    for rank, hit in enumerate(hits, start=1):
      print(f"  {rank:>2}. {hit.id:>9}  {hit.score:9.4f}  {hit.title}")
  print(f"(model loaded in {t1 - t0:.1f} s; {len(queries)} queries in {t2 - t1:.2f} s, "
        "compilation included)")


if __name__ == "__main__":
  app.run(main)
