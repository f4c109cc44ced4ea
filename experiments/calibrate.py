"""Fit a trained model's calibration on its validation slice; report it on the test split.

    python -m experiments.train --config experiments/configs/bibtex.py --workdir runs/cal_bib \
        --config.data.validation_fraction=0.1 --config.eval.every_epochs=1 \
        --config.checkpoint.best_metric=P@1
    python -m experiments.calibrate --workdir runs/cal_bib

The run must have held out a validation slice (``data.validation_fraction`` > 0): those
points were never trained on, and the calibration is fitted on them alone
(``mach_jax.calibration``: Platt's sigmoid(logit(p) / T + b) of the ``unbiased``
estimate p, and an isotonic map; the one with the lower validation log loss over each
point's top-k classes is saved). The test split is read once, to report the expected
calibration error of the top-k probabilities as estimated and under each map.
Writes the calibration into ``WORKDIR/model/model.json`` (``Predictor.predict_proba``
applies it), ``WORKDIR/calibration.json`` and ``WORKDIR/reliability.png``.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags, logging

from experiments.refusals import refusing
from mach_jax import bundle, calibration, data as data_lib, whole_file
from mach_jax.predictor import Predictor

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (its model/ folder).")
_K = flags.DEFINE_integer("k", 10, "Top-k classes per point whose probabilities are scored.")
_BINS = flags.DEFINE_integer("bins", 15, "Equal-width probability bins of the ECE.")
flags.mark_flags_as_required(["workdir"])


def plot(path: str, curves: dict[str, list[dict]]) -> bool:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect")
  for name, table in curves.items():
    ax.plot([b["mean_probability"] for b in table], [b["fraction_relevant"] for b in table],
            marker="o", ms=3, label=name)
  ax.set(xlabel="estimated p(k | x)", ylabel="fraction relevant", xlim=(0, 1), ylim=(0, 1))
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every load at INFO.
  model_dir = os.path.join(_WORKDIR.value, bundle.BUNDLE_DIR)
  with refusing("--workdir", OSError, ValueError):
    predictor = Predictor.load(model_dir)
  config = predictor.config
  if not config.data.validation_fraction:
    refit = os.path.isdir(os.path.join(_WORKDIR.value, "select", bundle.BUNDLE_DIR))
    raise app.UsageError(
        f"{model_dir} was trained on all of its training data: retrain it with "
        "--config.data.validation_fraction=0.1 (and eval.every_epochs, checkpoint.best_metric)"
        " so that the temperature is fitted on points it never saw" + (
            f" (its run refitted on the validation slice too, train.refit: calibrate the "
            f"selection's model, --workdir {os.path.join(_WORKDIR.value, 'select')}, or train"
            " with --config.train.refit=False)" if refit else ""))
  loss = config.model.loss
  with refusing(None, OSError):  # The run's data files, moved or deleted since.
    _, validation, test = data_lib.load_splits(config.data)
  if test is None:
    raise app.UsageError(f"{model_dir} was trained without a test split (config.data.test "
                         "is empty): the calibration is reported on one")

  # ---- Fit on the validation slice -------------------------------------------------------
  def estimates(held):
    scores, classes = predictor.predict_topk(held.X, k=_K.value, estimator="unbiased")
    return np.clip(scores, 0.0, 1.0), calibration.relevant_at(classes, held.Y)

  held = estimates(validation)
  fits = {m: calibration.fit(*held, method=m) for m in ("platt", "isotonic")}
  chosen = min(fits, key=lambda m: calibration.log_loss(fits[m].apply(held[0]), held[1]))

  # ---- Score on the test split: the estimate, and each map ------------------------------
  probs, relevant = estimates(test)
  report = {"loss": loss, "chosen": chosen, "k": _K.value,
            "calibration": {m: c.to_json() for m, c in fits.items()},
            "validation_log_loss": {m: calibration.log_loss(c.apply(held[0]), held[1])
                                    for m, c in fits.items()},
            "num_validation": validation.num_points, "num_test": test.num_points,
            "P@1": float(relevant[:, 0].mean())}
  curves = {}
  for name, p in (("estimate", probs), *((m, c.apply(probs)) for m, c in fits.items())):
    ece, bins = calibration.expected_calibration_error(p, relevant, _BINS.value)
    report[name] = {"ECE": ece, "log_loss": calibration.log_loss(p, relevant), "bins": bins}
    curves[f"{name}: ECE {ece:.3f}"] = bins
  bundle.set_calibration(model_dir, fits[chosen].to_json())
  report["plot"] = plot(os.path.join(_WORKDIR.value, "reliability.png"), curves)
  with whole_file.replacing(os.path.join(_WORKDIR.value, "calibration.json")) as f:
    json.dump(report, f, indent=2)
  print(f"test top-{_K.value} ECE (loss {loss}; fitted on {validation.num_points} validation "
        f"points): estimate {report['estimate']['ECE']:.4f}, platt "
        f"{report['platt']['ECE']:.4f}, isotonic {report['isotonic']['ECE']:.4f}; saved: "
        f"{chosen} (lower validation log loss); P@1 {report['P@1']:.4f} under every map")


if __name__ == "__main__":
  app.run(main)
