"""Defaults shared by every experiment config; each config file overrides what it tunes."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Device mesh: 'rep' splits the repetitions (each device owns whole ones, no collective),
  # 'data' splits the batch rows (one all-reduce of the gradients per step). -1 = the rest.
  c.mesh = (("data", 1), ("rep", -1))
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=False,  # Call jax.distributed.initialize (multi-process / multi-host).
      coordinator_address="",  # host:port of process 0; empty = auto-detect (e.g. SLURM).
      num_processes=-1,  # -1 = auto-detect.
      process_id=-1))  # -1 = auto-detect.

  c.data = ml_collections.ConfigDict()
  c.data.name = "xc"  # 'synthetic' or 'xc' (train/test XC-format files).
  c.data.train = ""
  c.data.test = ""
  # Keep parsed XC files here as .npz (read_xc): a sweep parses each file once. '' = never.
  c.data.cache_dir = ""
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_train=50_000, num_test=5_000, num_classes=10_000, num_features=20_000, seed=0))

  c.model = ml_collections.ConfigDict()
  c.model.R = 16  # Repetitions.
  c.model.B = 32  # Buckets per repetition.
  c.model.hidden = (512,)  # hidden[0] = H, the input layer's width.
  c.model.hash_family = "murmur"  # universal | murmur | balanced.
  c.model.hash_seed = 0
  c.model.loss = "bce"  # bce | softmax_hist | softmax.
  c.model.dense_input = False  # Dense [b, D] input instead of sparse nonzeros.
  c.model.embedding_bag = "auto"  # auto | dense | gather (sparse input only; same result).
  c.model.dtype = "float32"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"  # constant | cosine (with linear warm-up).
  c.optimizer.warmup_steps = 0
  c.optimizer.clip_norm = 0.0  # Per-repetition gradient-norm clip; 0 disables it.
  c.optimizer.weight_decay = 0.0
  # Row-sparse (lazy) Adam for the input table: update only the rows a batch touches.
  # Pays off when D is much larger than a batch's distinct features; needs adam, no clip.
  c.optimizer.row_sparse = False
  c.optimizer.table_lr_scale = 1.0  # Input-table learning rate / the rest's (row_sparse only).

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_epochs = 10
  c.train.log_every_steps = 50
  c.train.progress_bar = True
  # Stop once a periodic evaluation (eval.every_epochs / every_steps) of eval.estimator
  # reaches target_value on target_metric (e.g. "P@1"); "" trains all epochs.
  c.train.target_metric = ""
  c.train.target_value = 0.0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.enabled = True  # Rerunning the same command with the same workdir resumes.
  c.checkpoint.every_steps = 500  # Also after every evaluation and at the end; 0: only those.
  c.checkpoint.keep = 2  # Last checkpoints kept (plus the best by best_metric).
  c.checkpoint.best_metric = "P@1"  # From periodic evaluations; "" keeps only the last ones.

  c.eval = ml_collections.ConfigDict()
  c.eval.k = 5
  c.eval.estimator = "mean"  # Reported at the top level of results.json.
  c.eval.estimators = ("mean", "unbiased", "logit_sum", "min", "median", "log_mean")
  c.eval.batch_size = 256
  c.eval.every_epochs = 0  # 0: evaluate only at the end.
  c.eval.every_steps = 0  # Also evaluate every this many steps; 0: off.
  c.eval.subset = 0  # Points of the test set used by periodic evaluations; 0: all.
  c.eval.memory_budget_mb = 16  # Bounds the [b, chunk] blocks; small chunks stay in cache.
  c.eval.decode = "exact"  # exact (all K classes) | candidates (top-m buckets per rep).
  c.eval.candidates_m = 2  # Buckets probed per repetition by the candidates decoder.
  c.eval.min_count = 1  # Candidates must sit in the top-m of at least this many reps.
  c.eval.propensity_A = 0.55
  c.eval.propensity_B = 1.5
  return c


def shared_data(name: str, split: str) -> str:
  """Path of ../shared/data/<name>/<split>.txt.gz next to the repository."""
  import os
  root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
  return os.path.normpath(os.path.join(root, name, f"{split}.txt.gz"))


def built_data(name: str, split: str) -> str:
  """Path of runs/data/<name>/<split>.txt.gz in the repository: sets the repo builds itself
  (``python -m experiments.datasets.<name> --out runs/data/<name>``)."""
  import os
  root = os.path.join(os.path.dirname(__file__), "..", "..", "runs", "data")
  return os.path.normpath(os.path.join(root, name, f"{split}.txt.gz"))
