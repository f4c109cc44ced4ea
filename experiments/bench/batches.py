"""A config's training batches alone, nothing trained: seconds per epoch and resident set.

    python -m experiments.bench.batches --config experiments/configs/text.py \
        --config.data.train=runs/data/debian/train.tsv \
        --config.data.test=runs/data/debian/test.tsv \
        --config.data.catalogue=runs/data/debian/items.tsv --epochs 3

Reads the data as ``train_and_evaluate`` does (``load_splits`` with the run's number of
passes, so a query log's featurized cache goes to a temporary folder as it would to the
workdir), then makes ``--epochs`` epochs of batches through the same background prefetch,
one data shard, and drops them. The process's resident set is sampled every 10 ms
(``checkpoint_memory.Peak``): what the input pipeline holds beside a run's state, and what
each epoch costs the prefetch thread.
The tool behind "A shuffle window's rows read from the featurized-log file" in
experiments/bench/NOTES.md.
"""

from __future__ import annotations

import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from experiments.bench.checkpoint_memory import Peak

_CONFIG = _EPOCHS = None  # Flags: see _flags().


def measure(config, epochs: int) -> dict:
  """Seconds and batches per epoch, and the resident set (MB) before and at its highest."""
  from mach_jax.data import batching, load_splits

  with tempfile.TemporaryDirectory() as cache_dir:
    train = load_splits(config.data, max(config.train.num_epochs, 1), cache_dir=cache_dir,
                        stream_test=True).train
    b = config.train.batch_size
    widths = train.widths(b)
    per_epoch = []
    with Peak() as peak:
      for epoch in range(epochs):
        t0, n = time.perf_counter(), 0
        for _ in batching.prefetch(train.batches(b, seed=config.seed, epoch=epoch,
                                                 widths=widths)):
          n += 1
        per_epoch.append({"seconds": time.perf_counter() - t0, "batches": n})
  return {"start_rss_mb": peak.base, "peak_rss_mb": max(peak.peak, peak.base),
          "epochs": per_epoch}


def _flags():
  """Defined only when run as a script (importing ``measure`` defines no flags)."""
  global _CONFIG, _EPOCHS
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                            lock_config=True)
  _EPOCHS = flags.DEFINE_integer("epochs", 3, "epochs of batches to make")
  flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  res = measure(_CONFIG.value, _EPOCHS.value)
  print(f"resident set {res['start_rss_mb']:.0f} MB after loading, at most "
        f"{res['peak_rss_mb']:.0f} MB while making batches (sampled every 10 ms)")
  for i, e in enumerate(res["epochs"]):
    print(f"epoch {i}: {e['batches']} batches in {e['seconds']:.1f} s")


if __name__ == "__main__":
  _flags()
  sys.exit(app.run(main))
