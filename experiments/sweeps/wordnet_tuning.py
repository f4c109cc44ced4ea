"""The tuning path on WordNet, as overrides of experiments/configs/wordnet.py (its last point).

    python -m experiments.sweep --config experiments/configs/wordnet.py \
        --sweep experiments/sweeps/wordnet_tuning.py --out runs/tune_wordnet
    python -m experiments.plots runs/tune_wordnet      # summary.md: docs/results.md's table

Each point changes one thing from the one before (R = 8, B = 1,024, H = 256, batch 256,
row-sparse Adam throughout): learning rate and schedule, a larger step for the input table,
R, the loss, B; plus the full softmax (one-vs-all BCE) of the same network.
"""

_BCE = {"model.loss": "bce", "optimizer.table_lr_scale": 1.0}
_CONSTANT = {"optimizer.schedule": "constant", "optimizer.warmup_steps": 0}


def get_sweep():
  return [
      {**_BCE, **_CONSTANT, "optimizer.learning_rate": 1e-3, "train.num_epochs": 1},
      {**_BCE, **_CONSTANT, "optimizer.learning_rate": 3e-3},
      {**_BCE, "optimizer.learning_rate": 5e-3, "train.num_epochs": 8},
      {**_BCE},
      {"model.loss": "bce"},
      {"model.loss": "bce", "model.R": 16},
      {},  # The config as committed: softmax on the bucket histogram.
      {"model.B": 2048},
      {**_BCE, **_CONSTANT, "optimizer.learning_rate": 3e-3, "model.hash_family": "identity"},
  ]
