"""Top-k predictions for an XC-format file from a trained model folder.

    python -m experiments.predict --workdir runs/bibtex \
        --input ../shared/data/bibtex/test.txt.gz --k 5 --output preds.txt

Writes one line per point, "label:score label:score ..." best first (fewer than k where
candidate decoding found fewer distinct labels for the point), written whole: an interrupted
run leaves no half file. If the input carries labels, prints P@1/P@3/P@5 (and nDCG@5) with
the model's estimator. A missing or damaged model folder, a malformed input line or a bad
flag ends the run with the message alone (``experiments.refusals``).
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from experiments.refusals import refusing, writable_output, writing
from mach_jax import metrics
from mach_jax.bundle import BUNDLE_DIR
from mach_jax.data.xc import read_xc
from mach_jax.predictor import Predictor

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (uses WORKDIR/model).")
_MODEL = flags.DEFINE_string("model", None, "A model folder (instead of --workdir).")
_INPUT = flags.DEFINE_string("input", None, "XC-format file (plain or .gz).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the predictions.")
_K = flags.DEFINE_integer("k", 5, "Predictions per point.")
_ESTIMATOR = flags.DEFINE_string("estimator", None, "Merge estimator (default: the model's).")
_DECODE = flags.DEFINE_enum("decode", None, ["exact", "candidates"],
                            "Decoder (default: the model's config.eval.decode).")
_M = flags.DEFINE_integer("m", None, "Buckets probed per repetition by --decode=candidates.")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO.
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise app.UsageError("pass exactly one of --workdir and --model")
  path = _MODEL.value or os.path.join(_WORKDIR.value, BUNDLE_DIR)
  output = writable_output("--output", _OUTPUT.value)
  with refusing("--model" if _MODEL.value else "--workdir", OSError, ValueError):
    predictor = Predictor.load(path)
  with refusing("--input", OSError, ValueError):
    data = read_xc(_INPUT.value)
  if data.X.shape[1] != predictor.num_features:
    raise SystemExit(f"error: --input: {_INPUT.value}: header has D={data.X.shape[1]} "
                     f"features, the model has D={predictor.num_features}")
  if data.num_labels != predictor.spec.K and data.Y.nnz:
    raise SystemExit(f"error: --input: {_INPUT.value}: header has L={data.num_labels} labels, "
                     f"the model has K={predictor.spec.K}")
  with refusing(naming=("k", "estimator", "m", "batch_size")):  # Bad flags: named.
    scores, classes = predictor.predict_topk(data.X, _K.value, _ESTIMATOR.value,
                                             method=_DECODE.value, m=_M.value)
  with writing("--output", output) as f:
    for s_row, c_row in zip(scores, classes):
      f.write(" ".join(f"{c}:{s:.6g}" for c, s in zip(c_row, s_row) if c >= 0) + "\n")
  print(f"wrote {len(classes)} lines to {output}")
  if data.Y.nnz and _K.value >= 5:
    m = metrics.evaluate(classes, data.Y, ks=(1, 3, 5))
    print("  ".join(f"{k} {m[k]:.4f}" for k in ("P@1", "P@3", "P@5", "nDCG@5")))


if __name__ == "__main__":
  app.run(main)
