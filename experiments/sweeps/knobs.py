"""Hash family x loss x hidden size at the config's R and B, plus the full softmax.

    python -m experiments.sweep --config experiments/configs/corel5k.py \
        --sweep experiments/sweeps/knobs.py --out runs/knobs_corel5k
    python -m experiments.plots runs/knobs_corel5k     # also writes summary.md

Every point evaluates all estimators (config.eval.estimators), so the estimator is the
fourth axis of this grid at no extra training.
"""


def get_sweep():
  points = [{"model.hash_family": family, "model.loss": loss, "model.hidden": (H,)}
            for family in ("universal", "murmur", "balanced")
            for loss in ("bce", "softmax_hist")
            for H in (256, 512)]
  points += [{"model.hash_family": "identity", "model.loss": loss} for loss in ("bce",
                                                                              "softmax_hist")]
  return points
