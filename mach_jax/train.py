"""Training and evaluation: pure step functions and ``train_and_evaluate(config, workdir)``.

The training state is a plain dict pytree ``{'params', 'opt_state', 'step'}``; every leaf of
``params`` and ``opt_state`` has the repetition axis first. The optimizer is vmapped over
that axis, so clipping, schedules and moments are strictly per repetition (a global-norm
clip over all parameters would couple the repetitions and need a collective).
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mach_jax import data as data_lib
from mach_jax import checkpoint as checkpoint_lib
from mach_jax import decode, losses, metrics, model as model_lib, sharding, sparse_adam
from mach_jax.data import batching
from mach_jax.hashing import IDENTITY, HashSpec
from mach_jax.model import REP_AXIS
from mach_jax.sharding import DATA_AXIS

# ---------------------------------------------------------------------------------------
# Construction from the config.


def hash_spec(config, num_classes: int) -> HashSpec:
  """The model's hash spec; ``hash_family='identity'`` is the full-softmax baseline (B = K)."""
  m = config.model
  if m.hash_family == IDENTITY:
    return HashSpec(family=IDENTITY, K=num_classes, B=num_classes, R=1, seed=0)
  return HashSpec(family=m.hash_family, K=num_classes, B=m.B, R=m.R, seed=m.hash_seed)


def make_model(config, num_features: int, spec: HashSpec) -> model_lib.MACH:
  m = config.model
  return model_lib.MACH(num_repetitions=spec.R, num_features=num_features, num_buckets=spec.B,
                        hidden=tuple(m.hidden), sparse_input=not m.dense_input,
                        embedding_bag=m.embedding_bag, dtype=jnp.dtype(m.dtype))


def learning_rate(opt, total_steps: int) -> float | optax.Schedule:
  if opt.schedule == "constant":
    return opt.learning_rate
  if opt.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, opt.warmup_steps,
                                              max(total_steps, opt.warmup_steps + 1))
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: expected constant|cosine")


def make_row_sparse(config, total_steps: int):
  """(init, update) of row-sparse Adam for the input table, or None when not configured."""
  opt = config.optimizer
  if not opt.get("row_sparse", False):
    if opt.get("table_lr_scale", 1.0) != 1.0:
      raise ValueError(f"config.optimizer.table_lr_scale={opt.table_lr_scale} needs "
                       "config.optimizer.row_sparse=True")
    return None
  problems = [f"config.optimizer.name={opt.name!r} (needs 'adam')" if opt.name != "adam" else "",
              f"config.optimizer.clip_norm={opt.clip_norm} (needs 0)" if opt.clip_norm else "",
              "config.model.dense_input=True (needs sparse input)"
              if config.model.dense_input else ""]
  problems = [p for p in problems if p]
  if problems:
    raise ValueError("config.optimizer.row_sparse=True is not supported with "
                     + ", ".join(problems))
  lr, scale = learning_rate(opt, total_steps), opt.get("table_lr_scale", 1.0)
  if scale != 1.0:
    # A row moves only in the steps whose batch holds its feature: rare features of a large
    # vocabulary get few updates, and a larger step for the table alone lets them catch up.
    base = lr
    lr = (lambda count: scale * base(count)) if callable(base) else scale * base
  return sparse_adam.make(lr)


def make_optimizer(opt, total_steps: int) -> optax.GradientTransformation:
  """The optimizer of ONE repetition; the train step vmaps it over 'rep'.

  With ``row_sparse`` it updates every parameter but the input table (see
  ``make_row_sparse``).
  """
  lr = learning_rate(opt, total_steps)
  if opt.name == "adam":
    core = optax.adam(lr)
  elif opt.name == "adamw":
    core = optax.adamw(lr, weight_decay=opt.weight_decay)
  elif opt.name == "sgd":
    core = optax.sgd(lr, momentum=0.9)
  else:
    raise ValueError(f"config.optimizer.name={opt.name!r}: expected adam|adamw|sgd")
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm > 0 else []
  return optax.chain(*parts, core)


class Parts(NamedTuple):
  spec: HashSpec
  model: model_lib.MACH
  tx: optax.GradientTransformation
  row_sparse: Any  # (init, update) of row-sparse Adam for the input table, or None.


def make_parts(config, num_features: int, num_classes: int, total_steps: int) -> Parts:
  """The hash spec, model and optimizer(s) of ``config``, as ``train_and_evaluate`` builds
  them (the benchmarks build theirs here too, so they time the same step)."""
  spec = hash_spec(config, num_classes)
  return Parts(spec, make_model(config, num_features, spec),
               make_optimizer(config.optimizer, total_steps),
               make_row_sparse(config, total_steps))


def make_decoder(config, spec: HashSpec) -> decode.Decoder:
  ev = config.eval
  return decode.Decoder(spec, config.model.loss, ev.batch_size,
                        memory_budget_bytes=int(ev.memory_budget_mb) << 20,
                        method=ev.get("decode", "exact"), m=ev.get("candidates_m", 2),
                        min_count=ev.get("min_count", 1))


def model_input(batch: dict[str, Any], sparse: bool):
  return batch if sparse else batch["dense"]


def split_table(params) -> tuple[jax.Array, dict]:
  """(input table [R, D, H], every other parameter)."""
  reps = dict(params["reps"])
  table = reps.pop("embedding")
  return table, {"reps": reps}


def join_table(table: jax.Array, rest: dict) -> dict:
  return {"reps": {**rest["reps"], "embedding": table}}


def init_state(model: model_lib.MACH, tx: optax.GradientTransformation, rng: jax.Array,
               batch: dict[str, Any], mesh: Mesh | None = None,
               row_sparse=None) -> dict[str, Any]:
  """Parameters from ``rng``; optimizer state initialised per repetition.

  With a ``mesh``, the state is created directly in its sharded layout (split on 'rep');
  the values do not depend on the mesh (JAX's partitionable threefry RNG). With
  ``row_sparse`` (see ``make_row_sparse``) the optimizer state is
  ``{'rest': optax state, 'embedding': row-sparse Adam state}``.
  """
  x = model_input(jax.tree.map(np.asarray, batch), model.sparse_input)

  def init(rng):
    params = model.init(rng, x)["params"]
    if row_sparse is None:
      opt_state = jax.vmap(tx.init)(params)
    else:
      table, rest = split_table(params)
      opt_state = {"rest": jax.vmap(tx.init)(rest), "embedding": jax.vmap(row_sparse[0])(table)}
    return {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}

  if mesh is None:
    jitted, platform = jax.jit(init), jax.default_backend()
  else:
    shapes = jax.eval_shape(init, rng)
    jitted = jax.jit(init, out_shardings=sharding.state_shardings(mesh, shapes))
    platform = mesh.devices.flat[0].platform
  options = INIT_CPU_COMPILER_OPTIONS if platform == "cpu" else None
  return jitted.lower(rng).compile(compiler_options=options)(rng)


# The initialisation program runs once, so on XLA:CPU it is compiled for compile time: LLVM
# optimisation level 1 instead of 2 took bibtex's `fast` model from 0.86 to 0.39 s (0.1-0.9 s
# on six shapes, 2-core VM) and gives bit-identical values (pinned in tests/test_train.py).
INIT_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


# ---------------------------------------------------------------------------------------
# Pure steps.


def train_step(state: dict[str, Any], batch: dict[str, Any], *, model: model_lib.MACH,
               tx: optax.GradientTransformation, spec: HashSpec, loss: str,
               hash_params: jax.Array | None = None, data_axis: str | None = None,
               row_sparse=None):
  """One update of the repetitions in ``state``. Returns (new state, metrics).

  Labels are hashed here, on device, per repetition (``hash_params``: the rows of
  ``spec.params()`` of the repetitions this call owns; default all). The gradient is pulled
  back from the per-repetition loss vector with a cotangent of ones, so no scalar sum over
  'rep' appears (that would be a cross-device reduction under sharding).

  Under ``shard_map`` with ``data_axis`` set, ``batch`` is this device's block of rows: the
  row count is summed over the axis so the loss is the global mean, and the gradient of the
  parameters (invariant over 'data') is summed over it by JAX itself (check_vma) -- the only
  collective of the step.

  With ``row_sparse`` the step differentiates with respect to the input-table rows the
  batch touches (one unique over the batch's feature ids) instead of the whole table, and
  updates only those rows with row-sparse Adam.

  Metrics: ``loss`` [R], per repetition. (No gradient norm: on XLA:CPU it cost 0.9 ms of a
  6 ms bibtex step, a transpose of the table's gradient, and nothing read it.)
  """
  label_mask = batch["labels"] >= 0
  buckets = spec.buckets(batch["labels"], jnp, params=hash_params)  # [R, b, L]
  params = state["params"]
  if row_sparse is not None:
    table, rest = split_table(params)
    D = table.shape[1]
    # Entries with value 0 (padding) touch nothing; they map to the zero row of id D.
    ids = jnp.where(batch["values"] != 0, batch["indices"], D)
    touched, local_ids = jnp.unique(ids, size=ids.shape[0], fill_value=D, return_inverse=True)
    params = join_table(jnp.take(table, touched, axis=1, mode="fill", fill_value=0), rest)
    batch = {**batch, "indices": local_ids.reshape(-1).astype(jnp.int32)}
    # The same module over the gathered rows: a table of T rows, looked up by gather.
    model = model.clone(num_features=ids.shape[0], embedding_bag="gather")
  x = model_input(batch, model.sparse_input)

  def loss_fn(params):
    logits = model.apply({"params": params}, x)
    sums, count = losses.mach_loss_sums(loss, logits, buckets, label_mask, batch["mask"])
    if data_axis is not None:
      count = jax.lax.psum(count, data_axis)
    return sums / jnp.maximum(count, 1.0)

  per_rep_loss, pullback = jax.vjp(loss_fn, params)
  (grads,) = pullback(jnp.ones_like(per_rep_loss))
  if data_axis is not None:
    per_rep_loss = jax.lax.psum(per_rep_loss, data_axis)
  if row_sparse is None:
    updates, opt_state = jax.vmap(tx.update)(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
  else:
    row_grads, rest_grads = split_table(grads)
    updates, rest_state = jax.vmap(tx.update)(rest_grads, state["opt_state"]["rest"], rest)
    table, table_state = jax.vmap(row_sparse[1], in_axes=(0, None, 0, 0))(
        table, touched, row_grads, state["opt_state"]["embedding"])
    params = join_table(table, optax.apply_updates(rest, updates))
    opt_state = {"rest": rest_state, "embedding": table_state}
  new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
  return new_state, {"loss": per_rep_loss}


def _local_parts(model: model_lib.MACH, spec: HashSpec, mesh: Mesh):
  """The model of one device's repetitions, and that device's rows of the hash parameters."""
  r_local = spec.R // mesh.shape[REP_AXIS]
  local_model = model.clone(num_repetitions=r_local)
  all_params = jnp.asarray(spec.params())

  def hash_params():
    start = jax.lax.axis_index(REP_AXIS) * r_local
    return jax.lax.dynamic_slice_in_dim(all_params, start, r_local)
  return local_model, hash_params


def _specs(tree) -> Any:
  return jax.tree.map(lambda x: P(REP_AXIS) if x.ndim >= 1 else P(), tree)


def _batch_layout(mesh: Mesh, batch):
  """(axis to sum over, shard_map in_specs of the batch).

  With one 'data' shard the batch is declared replicated (the same layout), so the step
  has no psum at all: a psum over a size-1 axis still compiles to an all-reduce.
  """
  if mesh.shape[DATA_AXIS] == 1:
    return None, {k: P() for k in batch}
  return DATA_AXIS, {k: sharding.BATCH_SPEC for k in batch}


def make_train_step(model, tx, spec, loss, mesh: Mesh, state, batch,
                    row_sparse=None) -> Callable:
  """``train_step`` for ``mesh``: each device runs it on its own repetitions and rows.

  Jitted with the state donated and explicit in/out shardings; ``state`` and ``batch`` are
  examples that fix the tree structures.
  """
  local_model, hash_params = _local_parts(model, spec, mesh)
  data_axis, batch_specs = _batch_layout(mesh, batch)

  def local_step(state, batch):
    return train_step(state, batch, model=local_model, tx=tx, spec=spec, loss=loss,
                      hash_params=hash_params(), data_axis=data_axis, row_sparse=row_sparse)

  state_specs = _specs(state)
  metric_specs = {"loss": P(REP_AXIS)}
  step = jax.shard_map(local_step, mesh=mesh, in_specs=(state_specs, batch_specs),
                       out_specs=(state_specs, metric_specs))
  state_shardings = sharding.state_shardings(mesh, state)
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(state_shardings, sharding.batch_shardings(mesh, batch)),
                 out_shardings=(state_shardings, jax.tree.map(
                     lambda s: NamedSharding(mesh, s), metric_specs)))


def must_sync_each_step(mesh: Mesh) -> bool:
  """Whether to wait for each step before dispatching the next.

  XLA:CPU's in-process collectives can deadlock when several steps with an all-reduce are
  queued at once on few cores (seen with 2-8 simulated devices on 2 cores: a rendezvous
  times out after 40 s and aborts the process). Only data-parallel CPU meshes have
  collectives, so only they pay for the wait.
  """
  return mesh.shape[DATA_AXIS] > 1 and mesh.devices.flat[0].platform == "cpu"


def make_logits_fn(model, spec: HashSpec, mesh: Mesh, params, batch) -> Callable:
  """jit(params, batch) -> logits [R, b, B], each device computing its own repetitions."""
  local_model, _ = _local_parts(model, spec, mesh)
  data_axis, batch_specs = _batch_layout(mesh, batch)
  fn = jax.shard_map(
      lambda p, b: local_model.apply({"params": p}, model_input(b, model.sparse_input)),
      mesh=mesh, in_specs=(_specs(params), batch_specs), out_specs=P(REP_AXIS, data_axis))
  return jax.jit(fn, in_shardings=(sharding.state_shardings(mesh, params),
                                   sharding.batch_shardings(mesh, batch)))


# ---------------------------------------------------------------------------------------
# Evaluation.


def predict_topk(params, logits_fn, decoder: decode.Decoder, X, Y, *, batch_size: int, k: int,
                 estimators, mesh: Mesh, dense: bool = False) -> dict[str, np.ndarray]:
  """(scores, class ids), each [n, k], for each estimator, batch by batch (one forward each).

  Each device computes its repetitions' logits; only the [R, b, B] logits cross devices
  (gathered to every host), never a [b, K] score matrix. The merge over all K then runs on
  the host's first device.
  """
  out = {e: [] for e in estimators}
  shards = mesh.shape[DATA_AXIS]
  for batch in batching.prefetch(batching.iterate_batches(X, Y, batch_size, shuffle=False,
                                                          dense=dense, num_shards=shards)):
    n = int(batch["mask"].sum())
    sharded = logits_fn(params, sharding.put(batch, sharding.batch_shardings(mesh, batch)))
    logits = jnp.asarray(multihost_utils.process_allgather(sharded, tiled=True))
    for e in estimators:
      scores, classes = decoder.topk(logits, k, e)
      out[e].append((np.asarray(scores)[:n], np.asarray(classes)[:n]))
  return {e: tuple(np.concatenate(part) for part in zip(*v)) for e, v in out.items()}


def evaluate(params, logits_fn, decoder, test: data_lib.XCData, inv_propensity, config,
             mesh: Mesh, rows: np.ndarray | None = None) -> dict[str, Any]:
  """Metrics for every estimator on ``test`` (or on its ``rows``)."""
  X, Y = (test.X, test.Y) if rows is None else (test.X[rows], test.Y[rows])
  ev = config.eval
  preds = predict_topk(params, logits_fn, decoder, X, Y, batch_size=ev.batch_size, k=ev.k,
                       estimators=tuple(ev.estimators), mesh=mesh,
                       dense=config.model.dense_input)
  return {e: metrics.evaluate(classes, Y, inv_propensity, ks=eval_ks(ev.k))
          for e, (_, classes) in preds.items()}


def eval_ks(k: int) -> tuple[int, ...]:
  """The cut-offs reported: 1, 3, 5 up to k, and k itself (k = 10: P@10 and R@10 too)."""
  return tuple(sorted({j for j in (1, 3, 5) if j <= k} | {k}))


def popularity_baseline(label_counts: np.ndarray, test: data_lib.XCData, inv_propensity,
                        k: int) -> dict[str, float]:
  """Metrics of the query-blind answer: the k most frequent training labels for every point.

  The floor a model must clear; on a long-tailed catalogue it is near 0, on WordNet (where
  one label sits on 86% of the points) it is high.
  """
  top = np.argsort(-np.asarray(label_counts), kind="stable")[:k]
  return metrics.evaluate(np.tile(top, (test.num_points, 1)), test.Y, inv_propensity,
                          ks=eval_ks(k))


# ---------------------------------------------------------------------------------------
# The loop.


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(pending: list[tuple[int, jax.Array]]) -> np.ndarray:
  """Fetch pending per-step losses; raise at the first step whose loss is not finite."""
  if not pending:
    return np.zeros((0, 0), np.float32)
  values = np.stack([_to_host(l) for _, l in pending])  # [n, R]
  bad = ~np.isfinite(values)
  if bad.any():
    i = int(np.argmax(bad.any(axis=1)))
    reps = np.nonzero(bad[i])[0].tolist()
    raise NonFiniteLossError(f"non-finite loss at step {pending[i][0]} in repetitions {reps} "
                             f"(values {values[i][reps].tolist()}); lower "
                             "config.optimizer.learning_rate or set config.optimizer.clip_norm")
  return values


def _to_host(x) -> np.ndarray:
  """A global array as NumPy on every process (gathers across hosts when needed)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def peak_rss_bytes() -> int:
  """This process's peak resident memory so far (0 where the OS does not say)."""
  try:
    import resource
  except ImportError:  # Not on POSIX.
    return 0
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(kib) * (1 if platform.system() == "Darwin" else 1024)  # macOS: bytes.


def library_versions() -> dict[str, str]:
  import importlib.metadata as md
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy"):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = "missing"
  return out


def _check_resumable(meta: dict, spec: HashSpec, config, workdir: str) -> None:
  """Refuse to resume a checkpoint written by a different model or data setup."""
  if meta["hash_spec"] != spec.to_dict():
    raise ValueError(f"{workdir}: the checkpoint's hash spec {meta['hash_spec']} differs from "
                     f"this run's {spec.to_dict()}; use a new --workdir")
  saved = meta["config"]
  now = json.loads(config.to_json())
  for c in (saved, now):  # Where parsed files are cached does not change the data.
    c.get("data", {}).pop("cache_dir", None)
  for key in ("model", "data", "optimizer", "seed"):  # The mesh may change.
    if key in now and saved.get(key) != now.get(key):
      raise ValueError(f"{workdir}: config.{key} differs from the checkpoint's "
                       f"({saved.get(key)} vs {now.get(key)}); use a new --workdir")
  for key in ("batch_size", "num_epochs"):
    if saved["train"][key] != now["train"][key]:
      raise ValueError(f"{workdir}: config.train.{key} differs from the checkpoint's "
                       f"({saved['train'][key]} vs {now['train'][key]}); use a new --workdir")


def _append_jsonl(path: str, record: dict) -> None:
  if jax.process_index() != 0:  # One writer in multi-process runs.
    return
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train MACH as ``config`` says, evaluate, and write ``workdir/results.json``.

  Writes ``workdir/metrics.jsonl`` (one JSON object per log or evaluation event) and
  returns the results dict.
  """
  t_start = time.time()
  sharding.initialize_distributed(config.distributed)
  os.makedirs(workdir, exist_ok=True)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  tc, ev = config.train, config.eval
  if ev.estimator not in ev.estimators:
    raise ValueError(f"config.eval.estimator={ev.estimator!r} is not among "
                     f"config.eval.estimators={tuple(ev.estimators)}: add it there")

  # ---- Input ---------------------------------------------------------------------------
  if config.data.name == "queries":  # Text, streamed from disk; test held in memory.
    train, test = data_lib.load_queries(config)
  else:
    train, test = data_lib.load(config.data)
  K, D = train.num_labels, train.num_features
  inv_prop = 1.0 / metrics.propensities_from_counts(train.label_counts(), train.num_points,
                                                    ev.propensity_A, ev.propensity_B)
  t_data = time.time() - t_start

  # ---- Model & optimizer ---------------------------------------------------------------
  steps_per_epoch = -(-train.num_points // tc.batch_size)
  spec, model, tx, row_sparse = make_parts(config, D, K, steps_per_epoch * tc.num_epochs)
  dense = config.model.dense_input

  # ---- Mesh & sharded state -------------------------------------------------------------
  mesh_spec = config.mesh if spec.family != IDENTITY else (("data", 1), ("rep", 1))
  mesh = sharding.make_mesh(mesh_spec, spec.R, tc.batch_size)
  shards = mesh.shape[DATA_AXIS]
  widths = train.widths(tc.batch_size // shards)
  first = train.first_batch(tc.batch_size, widths, dense=dense, num_shards=shards)
  state = init_state(model, tx, jax.random.key(config.seed), first, mesh, row_sparse)
  print(sharding.check_state_sharding(mesh, state, sharding.state_shardings(mesh, state)),
        flush=True)
  num_params = model_lib.count_params(state["params"])
  num_params_full = model_lib.num_params_full_softmax(D, tuple(config.model.hidden), K)
  step_fn = make_train_step(model, tx, spec, config.model.loss, mesh, state, first, row_sparse)
  logits_fn = make_logits_fn(model, spec, mesh, state["params"], first)
  batch_shardings = sharding.batch_shardings(mesh, first)
  sync_each_step = must_sync_each_step(mesh)
  decoder = make_decoder(config, spec)
  subset = None
  if ev.subset and ev.subset < test.num_points:
    subset = np.random.default_rng(config.seed).choice(test.num_points, ev.subset, replace=False)
  print(f"MACH: K={K} classes, D={D} features, R={spec.R} x B={spec.B} buckets "
        f"({spec.family} hash); {num_params:,} parameters, {num_params / num_params_full:.3g}x "
        f"the {num_params_full:,} of a full softmax. {train.num_points} train / "
        f"{test.num_points} test points.", flush=True)

  # ---- Checkpoint: resume where a previous run of this workdir stopped -------------------
  ck = config.checkpoint
  manager = checkpoint_lib.make_manager(workdir, ck.keep, ck.best_metric) if ck.enabled else None
  train_seconds, examples, step, start_epoch, start_batch = 0.0, 0, 0, 0, 0
  if manager is not None:
    restored = checkpoint_lib.restore_latest(
        manager, checkpoint_lib.abstract_like(state),
        check_meta=lambda meta: _check_resumable(meta, spec, config, workdir))
    if restored is not None:
      state, meta = restored.state, restored.meta
      step, start_epoch, start_batch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
      train_seconds, examples = meta["train_seconds"], meta["examples"]
      where = (f"epoch {start_epoch + 1}, batch {start_batch} of {steps_per_epoch}"
               if start_epoch < tc.num_epochs else "training already complete, evaluating")
      print(f"resumed from {manager.directory}/{restored.step}: {where}", flush=True)

  def save_checkpoint(epoch: int, batch_in_epoch: int, elapsed: float, metrics=None):
    if batch_in_epoch == steps_per_epoch:
      epoch, batch_in_epoch = epoch + 1, 0
    meta = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "shuffle_seed": config.seed, "train_seconds": elapsed, "examples": examples,
            "hash_spec": spec.to_dict(), "config": json.loads(config.to_json()),
            "versions": library_versions()}
    checkpoint_lib.save(manager, step, state, meta, metrics)

  # ---- Periodic evaluation and the stop-at-target rule -----------------------------------
  target_metric, target_value = tc.get("target_metric", ""), tc.get("target_value", 0.0)
  target = {"metric": target_metric, "value": target_value, "reached": False}
  periodic = {"seconds": 0.0, "count": 0}

  def periodic_eval(epoch: int, batch_in_epoch: int, elapsed: float, record: dict) -> bool:
    """Evaluate (on ``subset``), log, checkpoint; True when the target has been reached.

    ``elapsed`` is the training time so far, periodic evaluations excluded.
    """
    t0 = time.time()
    res = evaluate(state["params"], logits_fn, decoder, test, inv_prop, config, mesh, subset)
    main = res[ev.estimator]
    periodic["seconds"] += time.time() - t0
    periodic["count"] += 1
    _append_jsonl(metrics_path, {"step": step, "epoch": epoch + 1, "eval_points":
                                 len(subset) if subset is not None else test.num_points,
                                 **{f"eval/{k}": v for k, v in main.items()}})
    print(f"step {step} (epoch {epoch + 1}): loss {record.get('loss', float('nan')):.4f}  "
          f"P@1 {main['P@1']:.4f}  P@5 {main['P@5']:.4f}", flush=True)
    if manager is not None:
      save_checkpoint(epoch, batch_in_epoch, elapsed, main)
    if target_metric and main[target_metric] >= target_value and not target["reached"]:
      target.update(reached=True, step=step, epoch=epoch + 1, achieved=main[target_metric],
                    train_seconds=elapsed, periodic_eval_seconds=periodic["seconds"],
                    unix_time=time.time())
      return True
    return False

  # ---- Loop ----------------------------------------------------------------------------
  if target_metric and not (ev.every_epochs or ev.get("every_steps", 0)):
    raise ValueError(f"config.train.target_metric={target_metric!r} needs periodic "
                     "evaluations: set config.eval.every_epochs or config.eval.every_steps")
  record, stop = {}, False
  first_step_seconds = None
  for epoch in range(start_epoch, tc.num_epochs):
    t_epoch, eval_in_epoch = time.time(), 0.0
    skip = start_batch if epoch == start_epoch else 0
    pending: list[tuple[int, jax.Array]] = []
    batches = batching.prefetch(train.batches(
        tc.batch_size, shuffle=True, seed=config.seed, epoch=epoch, widths=widths,
        dense=dense, num_shards=shards, start=skip))
    bar = tqdm(batches, total=steps_per_epoch, initial=skip,
               desc=f"epoch {epoch + 1}/{tc.num_epochs}", leave=False, mininterval=1.0,
               disable=not tc.progress_bar)
    for i, batch in enumerate(bar, start=skip):
      state, m = step_fn(state, sharding.put(batch, batch_shardings))
      if sync_each_step:
        jax.block_until_ready(m)
      if first_step_seconds is None:  # The first batch, compilation and one step.
        jax.block_until_ready(m)
        first_step_seconds = time.time() - t_epoch
      step += 1
      examples += int(batch["mask"].sum())
      pending.append((step, m["loss"]))
      if step % tc.log_every_steps == 0 or i + 1 == steps_per_epoch:
        values = _check_finite(pending)
        pending = []
        elapsed = train_seconds + time.time() - t_epoch - eval_in_epoch
        record = {"step": step, "epoch": epoch + 1, "loss": float(values[-1].mean()),
                  "loss_per_rep": values[-1].tolist(), "examples_per_second": examples / elapsed}
        _append_jsonl(metrics_path, record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_second']:.0f}")
      if manager is not None and ck.every_steps and step % ck.every_steps == 0:
        _check_finite(pending)  # Never save a state that has gone non-finite.
        pending = []
        save_checkpoint(epoch, i + 1, train_seconds + time.time() - t_epoch - eval_in_epoch)
      if ev.get("every_steps", 0) and step % ev.every_steps == 0 and i + 1 < steps_per_epoch:
        _check_finite(pending)
        pending = []
        jax.block_until_ready(state)
        t0 = time.time()
        stop = periodic_eval(epoch, i + 1, train_seconds + t0 - t_epoch - eval_in_epoch, record)
        eval_in_epoch += time.time() - t0
        if stop:
          break
    if pending:
      _check_finite(pending)
    jax.block_until_ready(state)
    train_seconds += time.time() - t_epoch - eval_in_epoch
    if stop:
      break
    at_epoch_end = ev.every_epochs and (epoch + 1) % ev.every_epochs == 0
    at_step = ev.get("every_steps", 0) and step % ev.every_steps == 0
    if (at_epoch_end or at_step) and (epoch + 1 < tc.num_epochs or target_metric):
      if periodic_eval(epoch, steps_per_epoch, train_seconds, record):
        break
  if manager is not None:
    if manager.latest_step() != step:
      save_checkpoint(tc.num_epochs - 1, steps_per_epoch, train_seconds)
    manager.wait_until_finished()

  # ---- Final evaluation ----------------------------------------------------------------
  t_eval = time.time()
  res = evaluate(state["params"], logits_fn, decoder, test, inv_prop, config, mesh)
  eval_seconds = time.time() - t_eval
  main = res[ev.estimator]
  results = {
      **main,
      "estimator": ev.estimator,
      "by_estimator": res,
      "train_seconds": train_seconds,
      "examples_per_second": examples / max(train_seconds, 1e-9),
      "eval_seconds": eval_seconds,
      "periodic_eval_seconds": periodic["seconds"],
      "periodic_evals": periodic["count"],
      "first_step_seconds": first_step_seconds,
      "target": target,
      "data_seconds": t_data,
      "total_seconds": time.time() - t_start,
      "steps": step,
      "num_params": num_params,
      "num_params_full_softmax": num_params_full,
      "param_bytes": model_lib.param_bytes(state["params"]),
      "hash_spec": spec.to_dict(),
      "num_train": train.num_points,
      "num_test": test.num_points,
      "config": json.loads(config.to_json()),
      "versions": library_versions(),
      "devices": [str(d) for d in jax.devices()],
      "peak_rss_bytes": peak_rss_bytes(),
      "popularity_baseline": popularity_baseline(train.label_counts(), test, inv_prop, ev.k),
  }
  # ---- Inference bundle: params + hash spec + config, no optimizer state ---------------
  from mach_jax import predictor  # Imports this module: keep the import local.
  bundle = os.path.join(workdir, predictor.BUNDLE_DIR)
  results["bundle_bytes"] = predictor.export_bundle(bundle, state["params"], spec, config, D)
  if manager is not None:
    latest = os.path.join(str(manager.directory), str(manager.latest_step()))
    results["checkpoint_bytes"] = predictor.folder_bytes(latest)
  _append_jsonl(metrics_path, {"step": step, "final": True,
                               **{f"test/{k}": v for k, v in main.items()}})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
