"""Copy a model folder over a grown catalogue, retraining nothing.

    python -m experiments.widen --model runs/products/model --out runs/products/model_grown \
        --catalogue grown_products.tsv
    python -m experiments.search --workdir runs/products/model_grown "usb c charger"

``--catalogue`` is the grown catalogue (``id<TAB>title`` lines, ids 0..K-1, the old ids
first and unchanged): K is its number of lines, every line is checked, and the new folder
names it as its catalogue, so search and the service show the new products' titles. Or
``--num_classes K`` alone (a model without titles). Every old id keeps its buckets; a new
id is scored from the buckets it hashes to (``mach_jax.bundle.widen``; docs/serving.md, "A
growing catalogue"). To fine-tune on queries for the new products, start a run from the
new folder (``--config.train.init_from``). The folder is written whole or not at all.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments.refusals import refusing
from mach_jax import bundle
from mach_jax.data import count_lines
from mach_jax.search import read_titles

_MODEL = flags.DEFINE_string("model", None, "A model folder (or a workdir holding model/).")
_OUT = flags.DEFINE_string("out", None, "The new folder (must not exist).")
_CATALOGUE = flags.DEFINE_string("catalogue", None, "The grown catalogue's titles file.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "K of the grown catalogue (without "
                                    "--catalogue).")
flags.mark_flags_as_required(["model", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (_CATALOGUE.value is None) == (_NUM_CLASSES.value is None):
    raise app.UsageError("pass exactly one of --catalogue and --num_classes")
  path = _MODEL.value
  if not os.path.exists(os.path.join(path, "model.json")):
    path = os.path.join(path, bundle.BUNDLE_DIR)
  K = _NUM_CLASSES.value
  if _CATALOGUE.value is not None:
    with refusing("--catalogue", OSError, ValueError):  # Every line checked before copying.
      K = count_lines(_CATALOGUE.value)
      read_titles(_CATALOGUE.value, K)
  with refusing("--model", OSError, ValueError):
    old = bundle.read_info(path)["num_classes"]
  catalogue = _CATALOGUE.value and os.path.abspath(_CATALOGUE.value)
  # A K no larger than the folder's, a 'balanced' hash, an --out that exists, a full disk
  # (nothing is left at --out then): the message alone.
  with refusing(None, OSError, ValueError):
    bundle.widen(path, _OUT.value, K, catalogue)
  print(f"{path}: K = {old} -> {_OUT.value}: K = {K} ({K - old} new ids, no retraining)")


if __name__ == "__main__":
  app.run(main)
