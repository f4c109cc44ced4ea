"""The paper's ablation: R repetitions against B buckets, plus the full-softmax baseline.

    python -m experiments.sweep --config experiments/configs/bibtex.py \
        --sweep experiments/sweeps/r_b_grid.py --out runs/sweep_bibtex
    python -m experiments.plots runs/sweep_bibtex

Every point evaluates all estimators (config.eval.estimators), so estimator curves come free.
"""


def get_sweep():
  points = [{"model.R": R, "model.B": B} for B in (16, 32, 64) for R in (1, 2, 4, 8, 16, 32)]
  points.append({"model.hash_family": "identity"})  # The full softmax, same network.
  return points
