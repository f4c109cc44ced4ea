"""Launch one experiment: parse flags, call ``mach_jax.train.train_and_evaluate``, print.

    python -m experiments.train --config experiments/configs/synthetic.py --workdir /tmp/mach
    python -m experiments.train --config experiments/configs/bibtex.py --workdir /tmp/b \
        --config.model.R=16
"""

from __future__ import annotations

import json
import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.refusals import refusing
from mach_jax import checkpoint, sharding, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics.jsonl and results.json.")
flags.mark_flags_as_required(["config", "workdir"])

_SUMMARY = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5")


def _library_info_only(record: py_logging.LogRecord) -> bool:
  """mach_jax's INFO lines, and everyone's warnings (orbax and jax log every save at INFO)."""
  return record.levelno >= py_logging.WARNING or "/mach_jax/" in record.pathname


class _PlainFormatter(py_logging.Formatter):
  """The message alone for INFO lines (they read as the run's output), the level otherwise."""

  def format(self, record: py_logging.LogRecord) -> str:
    text = record.getMessage()
    return text if record.levelno < py_logging.WARNING else f"{record.levelname}: {text}"


def _train() -> dict:
  try:
    return train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except checkpoint.CheckpointLostError as e:  # Moved aside: once more, from before it.
    logging.warning("%s. Rerunning.", e)
    return train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def main(argv):
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  handler.addFilter(_library_info_only)
  handler.setFormatter(_PlainFormatter())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with refusing():  # A refused setting, a malformed file, a full disk: the message alone.
    results = sharding.ending_at_once_on_error(_train)
  if "P@1" in results:
    summary = tuple(k for k in _SUMMARY + ("P@10", "R@10") if k in results)  # (eval.k < 5)
    print("test " + "  ".join(f"{k} {results[k]:.4f}" for k in summary)
          + f"  (estimator: {results['estimator']})")
    for name, res in results["by_estimator"].items():
      print(f"  {name:>9}: " + "  ".join(f"{k} {res[k]:.4f}" for k in _SUMMARY[:3] if k in res))
    base = results["popularity_baseline"]
    print("  the most frequent training labels for every point: "
          + "  ".join(f"{k} {base[k]:.4f}" for k in summary if k in base))
  else:  # eval.final_test = False, or no data.test: no test split was read.
    print(f"no test evaluation (config.eval.final_test={_CONFIG.value.eval.final_test}, "
          f"config.data.test={_CONFIG.value.data.test!r})")
  if (kept := results.get("selected")) and "metrics" in kept:
    print(f"kept: epoch {kept['epoch']} (step {kept['step']}), validation "
          + "  ".join(f"{k} {kept['metrics'][k]:.4f}" for k in _SUMMARY if k in kept["metrics"]))
  ratio = results["num_params_full_softmax"] / results["num_params"]
  print(f"parameters: {results['num_params']:,} (MACH) vs {results['num_params_full_softmax']:,} "
        f"(full softmax): the full softmax needs {ratio:.3g}x MACH's; "
        f"{results['examples_per_second']:.0f} train examples/s, "
        f"{results['train_seconds']:.1f} s training; peak RSS "
        f"{results['peak_rss_bytes'] / 2**30:.2f} GiB")
  print(json.dumps({"results": f"{_WORKDIR.value}/results.json"}))


if __name__ == "__main__":
  app.run(main)
