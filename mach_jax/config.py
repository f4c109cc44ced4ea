"""The library's defaults, and the one function that turns a config into objects.

Every default lives in ``default_config()``; experiment configs (``experiments/configs``)
start from it and override what they tune, and the library reads ``config.x`` directly.
A few fields may be left for the data to decide (``model.R = 0``, ``model.B = 0``,
``model.loss = 'auto'``, ``eval.decode = 'auto'``); ``resolve`` fills them by a fixed rule
once the training data is loaded, and the resolved config is what a run saves.
``build(config, D, K, total_steps)`` makes the hash spec, the model, the optimizers and the
decoder; training, the benchmarks, the Predictor and the tests all build through it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import ml_collections
import optax

from mach_jax import config_checks, decode, model as model_lib, optim
from mach_jax.config_checks import check_loop  # noqa: F401  (re-exported: run before data)
from mach_jax.hashing import IDENTITY, HashSpec


def default_config() -> ml_collections.ConfigDict:
  """Every field the library reads, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Device mesh: 'rep' splits the repetitions (each device owns whole ones, no collective),
  # 'data' splits the batch rows (one all-reduce of the gradients per step). -1 = the rest.
  c.mesh = (("data", 1), ("rep", -1))
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=False,  # Call jax.distributed.initialize (multi-process / multi-host).
      coordinator_address="",  # host:port of process 0; empty = auto-detect (e.g. SLURM).
      num_processes=-1,  # -1 = auto-detect.
      process_id=-1,  # -1 = auto-detect.
      # A process that dies is noticed by the others after this long; they then exit.
      heartbeat_timeout_seconds=100))  # (JAX's default.)

  c.data = ml_collections.ConfigDict()
  # 'xc' (train/test XC-format files), 'queries' (query<TAB>ids text files, featurized
  # while streaming) or 'synthetic' (the embedded catalogue).
  c.data.name = "xc"
  c.data.train = ""
  c.data.test = ""  # '' (xc, queries): no test split; the run reports no test figures.
  # Keep parsed XC files here as .npz (read_xc): a sweep parses each file once. '' = never.
  # Also where a query log's featurized cache (cache_mb) is written; '' = the workdir.
  c.data.cache_dir = ""
  c.data.synthetic = ml_collections.ConfigDict(dict(  # mach_jax.data.make_catalogue's args.
      num_train=50_000, num_test=5_000, num_classes=10_000, num_features=20_000,
      words_per_label=5, noise_words=8, seed=0))
  # Query logs only: K is num_labels, or the line count of the catalogue (id<TAB>title...)
  # when num_labels is 0; the training log is shuffled within windows of buffer_size queries.
  c.data.catalogue = ""
  c.data.num_labels = 0
  c.data.buffer_size = 100_000
  # Query logs only: a training log whose featurized matrices fit in this many MB is
  # featurized once, into an unlinked file that later epochs read back (mach_jax.data.spill;
  # not in a one-epoch run); 0 featurizes every epoch.
  c.data.cache_mb = 2048
  # Query logs only: the text featurizer (mach_jax.data.text), saved with the model so that
  # serving rebuilds exactly the function it was trained with.
  # idf: weight hashed dimensions by their inverse document frequency in the training text.
  c.data.featurizer = ml_collections.ConfigDict(dict(
      num_features=1 << 18, word_ngrams=(1, 2), char_ngrams=(3, 3), weighting="log",
      char_weight=1.0, max_chars=10_000, idf=False))
  # Training points held out to tune and select on (mach_jax.data.validation); with > 0,
  # periodic evaluations run on them instead of the test split, and the model kept is the
  # best of them by checkpoint.best_metric. The split depends on validation_seed only.
  c.data.validation_fraction = 0.0
  c.data.validation_seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.R = 16  # Repetitions; 0: derived from the data (see resolve).
  c.model.B = 32  # Buckets per repetition; 0: derived from the data (see resolve).
  c.model.hidden = (512,)  # hidden[0] = H, the input layer's width.
  # Per-repetition input hash: repetition r reads feature j as g_r(j) in [0, input_dim)
  # (its own seed; colliding features add) and owns an [input_dim, H] table instead of
  # [D, H]. 0 = off. input_sign: a seeded +-1 per feature, as in feature hashing.
  c.model.input_dim = 0  # -1: derived from the data (see resolve).
  c.model.input_sign = True
  # One [D, H] input table feeding all R repetitions (their hidden and output layers stay
  # their own): R times fewer input rows to gather and update, but the repetitions are
  # coupled, and a 'rep'-sharded step all-reduces the [b, H] gradient of the shared layer's
  # output. Sparse input, no input hash. Off: the default path is collective-free.
  c.model.shared_input = False
  c.model.hash_family = "murmur"  # universal | murmur | balanced | identity (full softmax).
  c.model.hash_seed = 0
  c.model.loss = "bce"  # bce | softmax_hist | softmax | auto (see resolve).
  c.model.dense_input = False  # Dense [b, D] input instead of sparse nonzeros.
  c.model.embedding_bag = "auto"  # auto | dense | gather (sparse input only; same result).
  # Run each training step one repetition at a time (forward, backward and update) instead
  # of side by side (vmap): the same result with one repetition's temporaries live. Faster
  # and leaner for large row-sparse tables; slower for small models (NOTES.md).
  c.model.sequential_reps = False
  c.model.dtype = "float32"
  # Storage of the sparse input table and its row-sparse Adam moments: float32 | bfloat16
  # (half the bytes; arithmetic stays float32). bfloat16 needs optimizer.row_sparse.
  c.model.table_dtype = "float32"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # adam | adamw | sgd.
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"  # constant | cosine (with linear warm-up) | piecewise.
  c.optimizer.boundaries = ()  # piecewise: ((fraction of the run's steps, factor), ...).
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_fraction = 0.0  # More warm-up, as a fraction of the run's steps.
  c.optimizer.clip_norm = 0.0  # Per-repetition gradient-norm clip; 0 disables it.
  c.optimizer.weight_decay = 0.0
  # Row-sparse (lazy) Adam for the input table: update only the rows a batch touches.
  # Pays off when D is much larger than a batch's distinct features; needs adam, no clip.
  c.optimizer.row_sparse = False
  c.optimizer.table_lr_scale = 1.0  # Input-table learning rate / the rest's (row_sparse only).
  # With row_sparse: False moves every row each step by its decaying momentum (Adam itself,
  # one in-place pass over the table a step); True leaves untouched rows and their moments
  # as they are (LazyAdam; cheaper when a batch touches few rows). optim.row_sparse_adam.
  c.optimizer.lazy_rows = True
  # With row_sparse: one Adam second moment per input-table row, the mean over its H entries,
  # instead of one per entry ([D, 1] instead of [D, H]; optim.row_sparse_adam).
  c.optimizer.rowwise_nu = False
  # With row_sparse: storage of the input table's Adam moments, float32 | bfloat16; '' is
  # model.table_dtype. The arithmetic stays float32.
  c.optimizer.table_moments_dtype = ""

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_epochs = 10
  c.train.log_every_steps = 50
  c.train.progress_bar = True
  # Stop once a periodic evaluation (eval.every_epochs / every_steps) of eval.estimator
  # reaches target_value on target_metric (e.g. "P@1"); "" trains all epochs.
  c.train.target_metric = ""
  c.train.target_value = 0.0
  # With a validation slice: stop after this many periodic evaluations without a new best
  # checkpoint.best_metric; 0 never stops early.
  c.train.early_stopping_patience = 0
  # With a validation slice: after decay_patience evaluations without a new best, go back to
  # the best evaluation's state (parameters and optimizer moments) and go on with the
  # learning rate times decay_factor; at most max_decays times. Early stopping counts only
  # once every decay is spent. 0: never.
  c.train.decay_patience = 0
  c.train.decay_factor = 0.1
  c.train.max_decays = 1
  # Dropout: each repetition drops each nonzero of a training batch (input_dropout), or
  # each of its input layer's H activations (hidden_dropout), with this probability, by
  # its own mask; what is kept is scaled by 1 / (1 - p). Sparse input only.
  c.train.input_dropout = 0.0
  c.train.hidden_dropout = 0.0
  # A model folder whose parameters start the run instead of a fresh initialisation (its
  # catalogue may since have grown: bundle.load_params_like). The optimizer starts afresh;
  # a run that resumes from its own checkpoint ignores this.
  c.train.init_from = ""
  # Choose the epochs and decays on the validation slice, then train afresh on all the
  # training data with that schedule (mach_jax/refit.py); the run takes about twice as long.
  c.train.refit = False

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.enabled = True  # Rerunning the same command with the same workdir resumes.
  c.checkpoint.background = "auto"  # Saves written while training goes on: checkpoint.async_saves.
  c.checkpoint.every_steps = 500  # Also after every evaluation and at the end; 0: only those.
  c.checkpoint.keep = 2  # Last checkpoints kept (plus the best validation evaluation's).
  # From periodic evaluations; "" keeps only the last ones. With a validation slice it also
  # picks the model a run ends with (the best evaluation's parameters, not the last).
  c.checkpoint.best_metric = "P@1"
  c.checkpoint.keep_selection = False  # train.refit: keep select/checkpoints once it kept one.
  # Each save records its files' sizes and CRC-32 (a background save once it is written),
  # checked before a resume reads it (a damaged checkpoint is passed over): ~0.35 s a GB.
  c.checkpoint.record_files = True

  c.eval = ml_collections.ConfigDict()
  c.eval.k = 5
  c.eval.estimator = "mean"  # Reported at the top level of results.json.
  c.eval.estimators = ("mean", "unbiased", "logit_sum", "min", "median", "log_mean")
  c.eval.batch_size = 256
  c.eval.final_test = True  # False: end without reading the test split (tuning probes).
  c.eval.every_epochs = 0  # 0: evaluate only at the end.
  c.eval.every_steps = 0  # Also evaluate every this many steps; 0: off.
  c.eval.subset = 0  # Points of the test set used by periodic evaluations; 0: all.
  c.eval.memory_budget_mb = 16  # Bounds the [b, chunk] blocks; small chunks stay in cache.
  c.eval.decode = "exact"  # exact (all K) | candidates (top-m buckets per rep) | auto.
  c.eval.candidates_m = 2  # Buckets probed per repetition by the candidates decoder.
  c.eval.min_count = 1  # Candidates must sit in the top-m of at least this many reps.
  c.eval.propensity_A = 0.55
  c.eval.propensity_B = 1.5
  return c


AUTO_R = 8
AUTO_EXACT_DECODE_MAX_K = 200_000
AUTO_INPUT_HASH_MIN_D = 1 << 16


def resolve(config, num_classes: int, labels_per_point: float,
            num_features: int | None = None) -> ml_collections.ConfigDict:
  """``config`` with every data-derived field filled in by the rule below (a copy).

  * ``model.R = 0`` -> 8 repetitions.
  * ``model.input_dim = -1`` -> the power of two at most D / R, so that the R hashed input
    tables together hold no more rows than one [D, H] table; 0 (no input hash) when
    D < 65,536, where the tables are small anyway (D = 2^18, R = 8: 32,768), or with
    ``model.shared_input``.
  * ``model.B = 0`` -> the power of two nearest 8 sqrt(K), at most K: about 8x more buckets
    than classes per bucket (K = 159: 128; K = 63,000: 2,048; K = 1M: 8,192).
  * ``model.loss = 'auto'`` -> ``softmax_hist`` when points carry at most 2 labels on average
    (queries naming an item or two), else ``bce``.
  * ``eval.decode = 'auto'`` -> ``exact`` up to K = 200,000 classes, else ``candidates``.

  Args:
    num_classes: K.
    labels_per_point: mean labels per training point.
    num_features: D (needed by ``model.input_dim = -1`` only).
  """
  c = ml_collections.ConfigDict(config.to_dict())
  m = c.model
  if m.R == 0:
    m.R = AUTO_R
  if m.input_dim == -1 and m.shared_input:
    m.input_dim = 0  # A shared table reads the features unhashed.
  if m.input_dim == -1:
    if num_features is None:
      raise ValueError("config.model.input_dim=-1 is derived from D: pass num_features")
    fit = 2 ** int(math.floor(math.log2(num_features / m.R)))
    m.input_dim = fit if num_features >= AUTO_INPUT_HASH_MIN_D else 0
  if m.B == 0:
    m.B = int(min(num_classes, 2 ** round(math.log2(8 * math.sqrt(num_classes)))))
  if m.loss == "auto":
    m.loss = "softmax_hist" if labels_per_point <= 2 else "bce"
  if c.eval.decode == "auto":
    c.eval.decode = "exact" if num_classes <= AUTO_EXACT_DECODE_MAX_K else "candidates"
  return c


def hash_spec(config, num_classes: int) -> HashSpec:
  """The model's hash spec; ``hash_family='identity'`` is the full-softmax baseline (B = K)."""
  m = config.model
  inputs = dict(input_dim=m.input_dim, input_sign=m.input_sign)
  if m.hash_family == IDENTITY:
    return HashSpec(family=IDENTITY, K=num_classes, B=num_classes, R=1, seed=0, **inputs)
  return HashSpec(family=m.hash_family, K=num_classes, B=m.B, R=m.R, seed=m.hash_seed,
                  **inputs)


def make_model(config, num_features: int, spec: HashSpec) -> model_lib.MACH:
  m = config.model
  if m.table_dtype not in config_checks.TABLE_DTYPES:
    raise ValueError(f"config.model.table_dtype={m.table_dtype!r}: expected one of "
                     f"{config_checks.TABLE_DTYPES}")
  if m.table_dtype != "float32" and (m.dense_input or not config.optimizer.row_sparse):
    raise ValueError(f"config.model.table_dtype={m.table_dtype!r} stores the sparse input "
                     "table for row-sparse Adam: it needs config.optimizer.row_sparse=True "
                     "and config.model.dense_input=False")
  if spec.input_dim and m.dense_input:
    raise ValueError(f"config.model.input_dim={spec.input_dim} hashes sparse features: it "
                     "needs config.model.dense_input=False (or input_dim=0)")
  if m.shared_input and (m.dense_input or spec.input_dim):
    raise ValueError("config.model.shared_input=True shares one [D, H] table of sparse, "
                     "unhashed features: it needs config.model.dense_input=False and "
                     f"config.model.input_dim=0 (got {m.dense_input}, {spec.input_dim})")
  return model_lib.MACH(num_repetitions=spec.R,
                        num_features=spec.input_dim or num_features, num_buckets=spec.B,
                        hidden=tuple(m.hidden), sparse_input=not m.dense_input,
                        embedding_bag=m.embedding_bag, dtype=jnp.dtype(m.dtype),
                        table_dtype=jnp.dtype(m.table_dtype), shared_input=m.shared_input,
                        sequential=m.sequential_reps)


def make_decoder(config, spec: HashSpec, index=None) -> decode.Decoder:
  """The decoder of ``config.eval``; ``index``: a candidates decoder's index to share."""
  ev = config.eval
  return decode.Decoder(spec, config.model.loss, ev.batch_size,
                        memory_budget_bytes=int(ev.memory_budget_mb) << 20,
                        method=ev.decode, m=ev.candidates_m, min_count=ev.min_count,
                        index=index)


@dataclasses.dataclass(frozen=True)
class Parts:
  """What ``build`` makes of a config.

  Attributes:
    config: the config it was built from.
    spec: the hash spec (K, B, R, family, seed).
    model: the Flax model of all R repetitions.
    tx: the optimizer of ONE repetition (vmapped over 'rep' by the step): every parameter,
      or every parameter but the input table when ``table_tx`` is set.
    table_tx: row-sparse Adam for the input table, or None.
  """

  config: ml_collections.ConfigDict
  spec: HashSpec
  model: model_lib.MACH
  tx: optax.GradientTransformation
  table_tx: optim.RowSparseTransform | None

  @functools.cached_property
  def decoder(self) -> decode.Decoder:
    """The evaluation decoder (built on first use: its class table can be large)."""
    return make_decoder(self.config, self.spec)


def build(config, num_features: int, num_classes: int, total_steps: int) -> Parts:
  """The hash spec, model, optimizers and decoder of ``config`` for D features, K classes.

  Args:
    config: a config shaped like ``default_config()``.
    num_features: D.
    num_classes: K.
    total_steps: training steps in all (sizes the cosine schedule).

  Returns:
    ``Parts``.
  """
  spec = hash_spec(config, num_classes)
  return Parts(config, spec, make_model(config, num_features, spec),
               optim.make_optimizer(config, total_steps),
               optim.make_table_optimizer(config, total_steps))
