"""Copy a model folder with its input table stored as int8, one scale per row.

    python -m experiments.quantize --model runs/wn_text/model --out runs/wn_text/model_int8
    python -m experiments.search --workdir runs/wn_text/model_int8 "a small dog"

The input table is nearly all of a MACH model; stored as int8 with a float32 scale per row
(``mach_jax.quantize``) the folder takes about a quarter of its bytes. The Predictor, the
Searcher and the service read the new folder as they read the old one (the table comes
back as float32 when loaded, so the memory of a loaded model does not change). What it
costs in accuracy on each real set: docs/serving.md ("int8 model folders").
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments.refusals import refusing
from mach_jax import bundle

_MODEL = flags.DEFINE_string("model", None, "A model folder (or a workdir holding model/).")
_OUT = flags.DEFINE_string("out", None, "The new folder (must not exist).")
flags.mark_flags_as_required(["model", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  path = _MODEL.value
  if not os.path.exists(os.path.join(path, "model.json")):
    path = os.path.join(path, bundle.BUNDLE_DIR)
  # A folder that is no model, is damaged or quantized already; an --out that exists or
  # a disk that fills up (nothing is left at --out then): the message alone.
  with refusing(None, OSError, ValueError):
    before, after = bundle.quantize(path, _OUT.value)
  print(f"{path}: {before / 2**20:.1f} MiB -> {_OUT.value}: {after / 2**20:.1f} MiB "
        f"({after / before:.2f}x)")


if __name__ == "__main__":
  app.run(main)
