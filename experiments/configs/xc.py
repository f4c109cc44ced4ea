"""MACH on any XC-format train/test pair.

    python -m experiments.train --config experiments/configs/xc.py --workdir /tmp/xc \
        --config.data.train=PATH/train.txt --config.data.test=PATH/test.txt \
        --config.model.B=256

The defaults (R=16, B=32, H=512, BCE) suit a few hundred labels; raise B with K
(B around K/8 to K/4 for small sets, thousands for large ones). For a large D (tf-idf
features of text), add ``--config.optimizer.row_sparse=True
--config.model.sequential_reps=True``: Adam on the rows a batch touches, and the step one
repetition at a time (1.7-1.8x the examples/s of the step side by side at D = 120,000,
R = 8, H = 256, B = 2,048; experiments/bench/NOTES.md). Small models with dense Adam run
slower one repetition at a time, so it stays off by default.
"""

from mach_jax.config import default_config


def get_config():
  return default_config()
