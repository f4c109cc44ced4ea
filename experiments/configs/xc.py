"""MACH on any XC-format train/test pair.

    python -m experiments.train --config experiments/configs/xc.py --workdir /tmp/xc \
        --config.data.train=PATH/train.txt --config.data.test=PATH/test.txt \
        --config.model.B=256

The defaults (R=16, B=32, H=512, BCE) suit a few hundred labels; raise B with K
(B around K/8 to K/4 for small sets, thousands for large ones).
"""

from mach_jax.config import default_config


def get_config():
  return default_config()
