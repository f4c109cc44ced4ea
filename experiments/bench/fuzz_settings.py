"""Fuzz the training settings against an oracle of each field's documented domain.

    python -m experiments.bench.fuzz_settings --cases 300 --out runs/fuzz_settings

Each case starts from a small valid run (a synthetic catalogue of 400 classes, 2 epochs,
a validation slice judged every epoch, checkpoints, a decay on a plateau; half of the
cases read the same shape as query logs through the text featurizer instead) and changes
one to three settings, each drawn from its field's values in ``DOMAINS`` (and, on the
query logs, ``TEXT_DOMAINS``: the featurizer's and the log reader's): valid ones (bounds,
the data-derived ``0`` / ``-1`` / ``auto``, every choice of an enum) and invalid ones (zero
or negative where the field needs a positive number, past a bound, NaN and inf, an
unknown name), as a user's ``--config.<field>=`` overrides would give them. The oracle is
the domain written below (docs/reliability.md), not the code that checks it:

  * a value outside its field's domain must be refused with ValueError or TypeError whose
    message names the field (``<section>.<field>``) before the first training step;
    a run that ends is a *silent change* (the value was taken), any other error, or one
    naming no changed field, or a refusal after training began, an *unexplained crash*;
  * when every value is inside its domain, the run must end with finite metrics, or be
    refused, before training, naming one of the changed fields (settings that contradict
    each other); anything else is an unexplained crash, non-finite metrics a silent change.

Writes OUT/fuzz_settings.json; each failure is printed with its overrides as flags.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import warnings

from experiments.bench.fuzz import SilentChange, UnexplainedCrash, report, run

INF, NAN = float("inf"), float("nan")


def _pos(v):
  return v >= 1


def _nonneg(v):
  return v >= 0


def _fraction(v):
  return 0 <= v < 1


def _finite_nonneg(v):
  return math.isfinite(v) and v >= 0


def _one_of(*names):
  return lambda v: v in names


# field: (values drawn, predicate of the documented domain)
DOMAINS = {
    "model.R": ((0, 1, 2, 3, -1, -8), lambda v: v >= 0),  # 0: derived from the data.
    "model.B": ((0, 2, 16, 64, 400, 512, 1, -4), lambda v: v == 0 or 2 <= v <= 400),  # K = 400.
    "model.hidden": (((16,), (8, 8), (1,), (0,), (-4,), ()),
                     lambda v: len(v) >= 1 and min(v) >= 1),
    "model.input_dim": ((-1, 0, 64, 1024, -2), lambda v: v >= -1),
    "model.loss": (("bce", "softmax_hist", "softmax", "auto", "hinge"),
                   _one_of("bce", "softmax_hist", "softmax", "auto")),
    "model.hash_family": (("murmur", "universal", "balanced", "identity", "md5"),
                          _one_of("murmur", "universal", "balanced", "identity")),
    "model.hash_seed": ((0, 7, -1), _nonneg),
    "model.embedding_bag": (("auto", "dense", "gather", "sparse"),
                            _one_of("auto", "dense", "gather")),
    "model.table_dtype": (("float32", "bfloat16", "float16"), _one_of("float32", "bfloat16")),
    "model.sequential_reps": ((True, False), lambda v: True),
    "model.dense_input": ((True, False), lambda v: True),
    "optimizer.name": (("adam", "adamw", "sgd", "lamb"), _one_of("adam", "adamw", "sgd")),
    "optimizer.learning_rate": ((0.0, 1e-2, 1.0, -1e-3, NAN, INF), _finite_nonneg),
    "optimizer.schedule": (("constant", "cosine", "piecewise", "linear"),  # piecewise: no
                           _one_of("constant", "cosine", "piecewise")),  # boundaries given.
    "optimizer.warmup_steps": ((0, 5, -3), _nonneg),
    "optimizer.warmup_fraction": ((0.0, 0.3, -0.1, 1.0, NAN), _fraction),
    "optimizer.clip_norm": ((0.0, 1.0, -1.0, NAN), _finite_nonneg),
    "optimizer.weight_decay": ((0.0, 1e-4, -1e-4, NAN), _finite_nonneg),
    "optimizer.row_sparse": ((True, False), lambda v: True),
    "optimizer.table_moments_dtype": (("", "float32", "bfloat16", "float16"),
                                      _one_of("", "float32", "bfloat16")),  # "": the table's.
    "optimizer.table_lr_scale": ((1.0, 5.0, 0.0, -1.0, NAN), _finite_nonneg),
    "train.batch_size": ((1, 7, 64, 5000, 0, -64), _pos),
    "train.num_epochs": ((1, 3, 0, -1), _pos),
    "train.log_every_steps": ((1, 1000, 0, -5), _nonneg),  # 0: no training log lines.
    "train.input_dropout": ((0.0, 0.5, 1.0, -0.2, NAN), _fraction),
    "train.hidden_dropout": ((0.0, 0.5, 1.0, -0.2, NAN), _fraction),
    "train.early_stopping_patience": ((0, 1, 3, -1), _nonneg),
    "train.decay_patience": ((0, 1, 2, -1), _nonneg),
    "train.decay_factor": ((0.1, 0.5, 0.0, 1.0, 2.0, NAN), lambda v: 0 < v < 1),
    "train.max_decays": ((0, 1, 3, -1), _nonneg),
    "eval.k": ((1, 5, 10, 400, 401, 0, -5), lambda v: 1 <= v <= 400),  # K = 400.
    "eval.batch_size": ((1, 33, 256, 0, -2), _pos),
    "eval.every_epochs": ((0, 1, 2, -1), _nonneg),
    "eval.every_steps": ((0, 10, -10), _nonneg),
    "eval.subset": ((0, 50, 10_000, -1), _nonneg),  # Above the points: all of them.
    "eval.memory_budget_mb": ((16, 1, 0, -1), _pos),
    "eval.decode": (("exact", "candidates", "auto", "beam"),
                    _one_of("exact", "candidates", "auto")),
    "eval.candidates_m": ((1, 2, 8, 0, -1), _pos),  # (At most B: a cross-field refusal.)
    "eval.min_count": ((1, 2, 0, -1), _pos),  # (At most R: a cross-field refusal.)
    "data.validation_fraction": ((0.0, 0.1, 0.5, -0.1, 1.0, NAN), _fraction),
    "checkpoint.keep": ((1, 2, 5, 0, -1), _pos),
    "checkpoint.every_steps": ((0, 7, 100, -1), _nonneg),
    "checkpoint.background": (("auto", "always", "never", "sometimes"),
                              _one_of("auto", "always", "never")),
}


def _ngrams(v):
  return v == (0, 0) or 1 <= v[0] <= v[1]


TEXT_DOMAINS = {  # The query-log run's own settings (its featurizer, its reader).
    "data.featurizer.num_features": ((4096, 64, 1, 0, -5), _pos),
    "data.featurizer.word_ngrams": (((1, 2), (1, 1), (0, 0), (2, 1), (-1, 2), (0, 2)), _ngrams),
    "data.featurizer.char_ngrams": (((3, 5), (3, 3), (0, 0), (5, 3), (0, 3)), _ngrams),
    "data.featurizer.weighting": (("log", "tf", "bm25"), _one_of("log", "tf")),
    "data.featurizer.char_weight": ((1.0, 0.5, 0.0, -0.5, NAN), _finite_nonneg),
    "data.featurizer.max_chars": ((10_000, 12, 0, -1), _pos),  # 12: shorter than some.
    "data.featurizer.idf": ((True, False), lambda v: True),
    "data.buffer_size": ((100_000, 7, 1, 0, -1), _pos),
    "data.cache_mb": ((2048, 0, -1), _nonneg),
}


def write_logs(folder: str, K: int = 400) -> dict:
  """A small query log over K items (train, test, catalogue) in ``folder``: item k's
  queries are two of its three words and one word of any item."""
  import numpy as np
  rng = np.random.default_rng(0)
  paths = {name: os.path.join(folder, f"{name}.tsv") for name in ("train", "test", "items")}
  for name, n in (("train", 1500), ("test", 300)):
    with open(paths[name], "w") as f:
      for k in rng.integers(0, K, n):
        words = [f"w{3 * k + j}" for j in rng.permutation(3)[:2]] + [f"w{rng.integers(3 * K)}"]
        f.write(f"{' '.join(rng.permutation(words))}\t{k}\n")
  with open(paths["items"], "w") as f:
    f.writelines(f"{k}\titem {k}\n" for k in range(K))
  return paths


def base_config(logs: dict | None = None):
  """The run every case changes: valid, small, and using every part a setting reaches; a
  synthetic catalogue of 400 classes, or the query logs ``logs`` (``write_logs``)."""
  from mach_jax import config as config_lib
  c = config_lib.default_config()
  c.data.name = "synthetic"
  c.data.synthetic.update(num_train=1500, num_test=300, num_classes=400, num_features=600,
                          words_per_label=5, noise_words=8, seed=0)
  if logs:
    c.data.update(name="queries", train=logs["train"], test=logs["test"],
                  catalogue=logs["items"])
    c.data.featurizer.update(num_features=4096, char_ngrams=(3, 5))
  c.data.validation_fraction = 0.1
  c.model.update(R=4, B=32, hidden=(32,), loss="softmax_hist")
  c.mesh = (("data", 1), ("rep", 1))
  c.optimizer.learning_rate = 1e-2
  c.train.update(batch_size=64, num_epochs=2, log_every_steps=10, progress_bar=False,
                 decay_patience=1, early_stopping_patience=1)
  c.eval.update(batch_size=128, every_epochs=1, estimators=("mean", "log_mean"))
  c.checkpoint.update(every_steps=0, background="never")
  return c


def flags(overrides: dict) -> str:
  """The overrides as the command-line flags that reproduce the case."""
  return " ".join(f"--config.{k}={v!r}" if isinstance(v, str) else f"--config.{k}={v}"
                  for k, v in overrides.items())


def _trained(workdir: str) -> bool:
  """Whether the run took a training step (a log record with a loss, or a checkpoint)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(os.path.join(workdir, "checkpoints")) and os.listdir(
      os.path.join(workdir, "checkpoints")):
    return True
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return any("loss" in line for line in f)


def check(overrides: dict, folder: str, logs: dict | None = None) -> str:
  """One case: 'accepted' or 'refused'; raises SilentChange / UnexplainedCrash. With
  ``logs``, the run reads those query logs (``write_logs``)."""
  import jax

  from mach_jax import train
  config = base_config(logs)
  for key, value in overrides.items():
    *sections, field = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[field] = value
  domains = {**DOMAINS, **TEXT_DOMAINS}
  invalid = [k for k, v in overrides.items() if not domains[k][1](v)]
  workdir = tempfile.mkdtemp(dir=folder)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      results = train.train_and_evaluate(config, workdir)
  except Exception as e:  # noqa: BLE001 - the property is about which exception.
    named = [k for k in overrides if k.removeprefix("data.") in str(e)]  # (featurizer.x)
    what = f"{flags(overrides)}: {type(e).__name__}: {str(e)[:300]}"
    if not isinstance(e, (ValueError, TypeError)):
      raise UnexplainedCrash(what) from e
    if invalid and not set(invalid) & set(named):
      raise UnexplainedCrash(f"refused without naming {invalid}: {what}") from e
    if not named:
      raise UnexplainedCrash(f"a valid setting refused naming no changed field: {what}") from e
    if _trained(workdir):
      raise UnexplainedCrash(f"refused only after training began: {what}") from e
    return "refused"
  finally:
    jax.clear_caches()
    shutil.rmtree(workdir, ignore_errors=True)
  if invalid:
    raise SilentChange(f"{flags(overrides)}: {invalid} outside the domain, and the run ended "
                       f"(P@1 {results.get('P@1')})")
  bad = {k: v for k, v in results.items()
         if isinstance(v, float) and not math.isfinite(v) and k.startswith(("P@", "nDCG@"))}
  if bad:
    raise SilentChange(f"{flags(overrides)}: the run ended with {bad}")
  return "accepted"


def case(folder: str):
  """A hypothesis case: half of them on the query logs, with their own settings too."""
  logs = write_logs(folder)

  def one(draw):
    from hypothesis import strategies as st
    text = draw(st.booleans())
    domains = {**DOMAINS, **TEXT_DOMAINS} if text else DOMAINS
    fields = draw(st.lists(st.sampled_from(sorted(domains)), min_size=1, max_size=3,
                           unique=True))
    return check({f: draw(st.sampled_from(domains[f][0])) for f in fields}, folder,
                 logs if text else None)
  return one


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="runs/fuzz_settings")
  args = parser.parse_args()
  from absl import logging
  logging.set_verbosity(logging.ERROR)
  with tempfile.TemporaryDirectory() as folder:
    r = run("settings", case(folder), args.cases, args.seed)
  report(r, args.out, "fuzz_settings.json", ("ran", "refused"), seed=args.seed)


if __name__ == "__main__":
  main()
