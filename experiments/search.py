"""Search a model trained on a query log: query text in, top products out.

    python -m experiments.search --workdir runs/products "usb c charger 65w" --k 10
    python -m experiments.search --workdir runs/products --k 5 "red sofa" "kids bike"
    python -m experiments.search --workdir runs/products --input queries.tsv --output top.txt

Prints, per query, the top-k products (id, score, title) and the time it took. With
``--input`` (one query per line; a TSV's first column) it writes one line per query,
``id:score id:score ...`` best first, to ``--output`` and prints queries/s; with ``--score``
the input is a query log (``query<TAB>ids``) and it also prints P@1/P@3/P@5 and nDCG@5::

    python -m experiments.search --workdir runs/wn_text/select --k 5 --score \
        --input runs/data/wordnet/test.tsv --output /tmp/top.txt

The output file is written whole. A missing or damaged model folder or catalogue, a
malformed input line or a bad flag ends the run with the message alone. The featurizer
is the one saved with the model; the titles come from the catalogue named in the training
config (``--catalogue`` overrides it). The same in Python:
``mach_jax.search.Searcher.load(workdir).search(query, k)``.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags, logging

from experiments.refusals import refusing, writable_output, writing
from mach_jax import metrics
from mach_jax.data.query_log import label_matrix, read_lines
from mach_jax.search import Searcher, read_queries

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (or a model folder).")
_CATALOGUE = flags.DEFINE_string("catalogue", None, "products.tsv (default: the config's; "
                                  "'': none, ids only).")
_K = flags.DEFINE_integer("k", 10, "Products per query.")
_ESTIMATOR = flags.DEFINE_string("estimator", None, "Merge estimator (default: the model's).")
_DECODE = flags.DEFINE_enum("decode", None, ["exact", "candidates"],
                            "Decoder (default: the model's config.eval.decode).")
_M = flags.DEFINE_integer("m", None, "Buckets probed per repetition by --decode=candidates.")
_INPUT = flags.DEFINE_string("input", None, "File of queries, one per line (TSV: column 1).")
_OUTPUT = flags.DEFINE_string("output", None, "With --input: where to write the top-k ids.")
_SCORE = flags.DEFINE_bool("score", False, "With --input, a query log (query<TAB>ids): also "
                           "print P@1/P@3/P@5 and nDCG@5 of the top-k (k >= 5).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  logging.set_verbosity(logging.WARNING)
  queries = argv[1:]
  if bool(queries) == bool(_INPUT.value):
    raise app.UsageError("give queries as arguments, e.g. \"usb c charger 65w\" (\"\" is "
                         "allowed), or --input FILE, not both")
  if _INPUT.value and not _OUTPUT.value:
    raise app.UsageError("--input needs --output")
  if _SCORE.value and not (_INPUT.value and _K.value >= 5):
    raise app.UsageError("--score needs --input (a query log) and --k of at least 5")
  t0 = time.time()
  output = _OUTPUT.value and writable_output("--output", _OUTPUT.value)
  with refusing("--workdir", OSError, ValueError):  # No model, a damaged one, no catalogue.
    searcher = Searcher.load(_WORKDIR.value, _CATALOGUE.value)
  if _INPUT.value:
    with refusing("--input", OSError, ValueError):
      queries = read_queries(_INPUT.value)
  t1 = time.time()
  try:
    results = searcher.search(queries, k=_K.value, estimator=_ESTIMATOR.value,
                              method=_DECODE.value, m=_M.value)
  except ValueError as e:  # Too long a query, a bad --k: say so, no traceback.
    where = f" (--input {_INPUT.value}: query i is on line i + 1)" if _INPUT.value else ""
    raise SystemExit(f"error: {e}{where}") from None
  t2 = time.time()
  if output:
    with writing("--output", output) as f:
      for hits in results:
        f.write(" ".join(f"{h.id}:{h.score:.6g}" for h in hits) + "\n")
    print(f"wrote {len(results)} lines to {output}")
  else:
    for query, hits in zip(queries, results):
      shown = query if len(query) <= 100 else f"{query[:100]}... ({len(query)} characters)"
      print(f"query: {shown!r}")
      for rank, hit in enumerate(hits, start=1):
        print(f"  {rank:>2}. {hit.id:>9}  {hit.score:9.4f}  {hit.title}")
  if _SCORE.value:
    _print_scores(results, _INPUT.value, searcher.predictor.spec.K)
  rate = f" = {len(queries) / max(t2 - t1, 1e-9):.0f} queries/s" if _INPUT.value else ""
  print(f"(model and catalogue loaded in {t1 - t0:.1f} s; {len(queries)} queries in "
        f"{t2 - t1:.2f} s{rate}, featurizing and compilation included)")


def _print_scores(results, path: str, num_labels: int) -> None:
  """P@1/P@3/P@5 and nDCG@5 of ``results`` against the ids of the query log ``path``."""
  with refusing("--score", OSError, ValueError):
    labels = [ids for _, chunk, _ in read_lines(path, num_labels, 1 << 16) for ids in chunk]
  top = np.array([[h.id for h in hits] for hits in results])
  m = metrics.evaluate(top, label_matrix(labels, num_labels))
  print("  ".join(f"{k} {m[k]:.4f}" for k in ("P@1", "P@3", "P@5", "nDCG@5"))
        + f"  ({len(labels)} queries, {path})")


if __name__ == "__main__":
  app.run(main)
