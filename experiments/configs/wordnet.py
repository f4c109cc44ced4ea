"""MACH on the WordNet 3.0 taxonomy set (19,010 labels, about 8 per point, D = 150,335).

    apt-get install wordnet-base
    python -m experiments.datasets.wordnet --out runs/data/wordnet
    python -m experiments.train --config experiments/configs/wordnet.py --workdir /tmp/wordnet

Result: see the README table (P@1 / P@5 and the machine it was measured on).
"""

from experiments.configs.base import base_config, built_data


def get_config():
  c = base_config()
  c.data.train = built_data("wordnet", "train")
  c.data.test = built_data("wordnet", "test")
  c.model.R = 8
  c.model.B = 1024
  c.model.hidden = (256,)
  c.model.loss = "bce"
  c.optimizer.row_sparse = True
  c.train.batch_size = 256
  c.train.num_epochs = 5
  c.eval.estimator = "log_mean"
  return c
