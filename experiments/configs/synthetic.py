"""The embedded default: a synthetic catalogue of 300,000 products (no download needed).

    python -m experiments.train --config experiments/configs/synthetic.py --workdir /tmp/mach

250,000 training queries and 5,000 test queries over an 8,192-word vocabulary, with
power-law product popularity (see mach_jax/data/synthetic.py). R=4 repetitions of a
4,096-way classifier hold 6.3x fewer parameters than the same network with a
300,000-way softmax. Expected result: see the README's Quick start.
"""

from mach_jax.config import default_config


def get_config():
  c = default_config()
  c.data.name = "synthetic"
  c.data.synthetic.update(num_train=250_000, num_test=5_000, num_classes=300_000,
                          num_features=8192, words_per_label=5, noise_words=8, seed=0)
  c.model.R = 4
  c.model.B = 4096
  c.model.hidden = (128,)
  c.model.loss = "softmax_hist"
  c.train.batch_size = 512
  c.train.num_epochs = 3
  c.eval.estimators = ("mean", "log_mean", "min")
  return c
