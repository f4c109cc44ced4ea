"""Training and evaluation: pure step functions and ``train_and_evaluate(config, workdir)``.

The training state is a plain dict pytree ``{'params', 'opt_state', 'step'}``; every leaf of
``params`` and ``opt_state`` has the repetition axis first. The optimizer is vmapped over
that axis, so clipping, schedules and moments are strictly per repetition (a global-norm
clip over all parameters would couple the repetitions and need a collective).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from mach_jax import data as data_lib
from mach_jax import decode, losses, metrics, model as model_lib
from mach_jax.data import batching
from mach_jax.hashing import HashSpec

# ---------------------------------------------------------------------------------------
# Construction from the config.


def hash_spec(config, num_classes: int) -> HashSpec:
  m = config.model
  return HashSpec(family=m.hash_family, K=num_classes, B=m.B, R=m.R, seed=m.hash_seed)


def make_model(config, num_features: int) -> model_lib.MACH:
  m = config.model
  return model_lib.MACH(num_repetitions=m.R, num_features=num_features, num_buckets=m.B,
                        hidden=tuple(m.hidden), sparse_input=not m.dense_input,
                        embedding_bag=m.embedding_bag, dtype=jnp.dtype(m.dtype))


def make_optimizer(opt, total_steps: int) -> optax.GradientTransformation:
  """The optimizer of ONE repetition; the train step vmaps it over 'rep'."""
  if opt.schedule == "constant":
    lr = opt.learning_rate
  elif opt.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, opt.learning_rate, opt.warmup_steps,
                                            max(total_steps, opt.warmup_steps + 1))
  else:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: expected constant|cosine")
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


def model_input(batch: dict[str, Any], sparse: bool):
  return batch if sparse else batch["dense"]


def init_state(model: model_lib.MACH, tx: optax.GradientTransformation, rng: jax.Array,
               batch: dict[str, Any]) -> dict[str, Any]:
  """Parameters from ``rng``; optimizer state initialised per repetition."""
  params = jax.jit(model.init)(rng, model_input(batch, model.sparse_input))["params"]
  opt_state = jax.jit(jax.vmap(tx.init))(params)
  return {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}


# ---------------------------------------------------------------------------------------
# Pure steps.


def train_step(state: dict[str, Any], batch: dict[str, Any], *, model: model_lib.MACH,
               tx: optax.GradientTransformation, spec: HashSpec, loss: str):
  """One update of all R repetitions. Returns (new state, metrics with per-rep loss [R]).

  Labels are hashed here, on device, per repetition. The gradient is pulled back from the
  per-repetition loss vector with a cotangent of ones, so no scalar sum over 'rep' appears
  (that would be a cross-device reduction under sharding).
  """
  label_mask = batch["labels"] >= 0
  buckets = spec.buckets(batch["labels"], jnp)  # [R, b, L]
  x = model_input(batch, model.sparse_input)

  def loss_fn(params):
    logits = model.apply({"params": params}, x)
    return losses.mach_loss(loss, logits, buckets, label_mask, batch["mask"])

  per_rep_loss, pullback = jax.vjp(loss_fn, state["params"])
  (grads,) = pullback(jnp.ones_like(per_rep_loss))
  updates, opt_state = jax.vmap(tx.update)(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  grad_norm = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)
                           for g in jax.tree.leaves(grads)))
  new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
  return new_state, {"loss": per_rep_loss, "grad_norm": grad_norm}


def make_train_step(model, tx, spec, loss) -> Callable:
  """``train_step`` closed over its static parts, jitted with the state donated."""
  return jax.jit(functools.partial(train_step, model=model, tx=tx, spec=spec, loss=loss),
                 donate_argnums=0)


def make_logits_fn(model) -> Callable:
  """jit(params, batch) -> logits [R, b, B]."""
  return jax.jit(lambda params, batch: model.apply(
      {"params": params}, model_input(batch, model.sparse_input)))


# ---------------------------------------------------------------------------------------
# Evaluation.


def predict_topk(params, logits_fn, decoder: decode.Decoder, X, Y, *, batch_size: int, k: int,
                 estimators, dense: bool = False) -> dict[str, np.ndarray]:
  """Top-k class ids [n, k] for each estimator, batch by batch (forward once per batch)."""
  out = {e: [] for e in estimators}
  for batch in batching.prefetch(batching.iterate_batches(X, Y, batch_size, shuffle=False,
                                                          dense=dense)):
    n = int(batch["mask"].sum())
    logits = logits_fn(params, batch)
    for e in estimators:
      _, classes = decoder.topk(logits, k, e)
      out[e].append(np.asarray(classes)[:n])
  return {e: np.concatenate(v) for e, v in out.items()}


def evaluate(params, logits_fn, decoder, test: data_lib.XCData, inv_propensity, config,
             rows: np.ndarray | None = None) -> dict[str, Any]:
  """Metrics for every estimator on ``test`` (or on its ``rows``)."""
  X, Y = (test.X, test.Y) if rows is None else (test.X[rows], test.Y[rows])
  ev = config.eval
  preds = predict_topk(params, logits_fn, decoder, X, Y, batch_size=ev.batch_size, k=ev.k,
                       estimators=tuple(ev.estimators), dense=config.model.dense_input)
  return {e: metrics.evaluate(p, Y, inv_propensity) for e, p in preds.items()}


# ---------------------------------------------------------------------------------------
# The loop.


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(pending: list[tuple[int, jax.Array]]) -> np.ndarray:
  """Fetch pending per-step losses; raise at the first step whose loss is not finite."""
  values = np.stack([np.asarray(l) for _, l in pending])  # [n, R]
  bad = ~np.isfinite(values)
  if bad.any():
    i = int(np.argmax(bad.any(axis=1)))
    reps = np.nonzero(bad[i])[0].tolist()
    raise NonFiniteLossError(f"non-finite loss at step {pending[i][0]} in repetitions {reps} "
                             f"(values {values[i][reps].tolist()}); lower "
                             "config.optimizer.learning_rate or set config.optimizer.clip_norm")
  return values


def library_versions() -> dict[str, str]:
  import importlib.metadata as md
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy"):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = "missing"
  return out


def _append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train MACH as ``config`` says, evaluate, and write ``workdir/results.json``.

  Writes ``workdir/metrics.jsonl`` (one JSON object per log or evaluation event) and
  returns the results dict.
  """
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  tc, ev = config.train, config.eval

  # ---- Input ---------------------------------------------------------------------------
  train, test = data_lib.load(config.data)
  K, D = train.num_labels, train.num_features
  inv_prop = 1.0 / metrics.propensities(train.Y, ev.propensity_A, ev.propensity_B)
  t_data = time.time() - t_start

  # ---- Model & optimizer ---------------------------------------------------------------
  spec = hash_spec(config, K)
  model = make_model(config, D)
  steps_per_epoch = -(-train.num_points // tc.batch_size)
  total_steps = steps_per_epoch * tc.num_epochs
  tx = make_optimizer(config.optimizer, total_steps)
  dense = config.model.dense_input
  widths = batching.Widths.for_data(train.X, train.Y, tc.batch_size)
  first = batching.make_batch(train.X, train.Y, np.arange(min(tc.batch_size, train.num_points)),
                              tc.batch_size, widths, dense=dense)
  state = init_state(model, tx, jax.random.key(config.seed), first)
  num_params = model_lib.count_params(state["params"])
  num_params_full = model_lib.num_params_full_softmax(D, tuple(config.model.hidden), K)
  step_fn = make_train_step(model, tx, spec, config.model.loss)
  logits_fn = make_logits_fn(model)
  decoder = decode.Decoder(spec, config.model.loss, ev.batch_size,
                           memory_budget_bytes=int(ev.memory_budget_mb) << 20)
  subset = None
  if ev.subset and ev.subset < test.num_points:
    subset = np.random.default_rng(config.seed).choice(test.num_points, ev.subset, replace=False)
  print(f"MACH: K={K} classes, D={D} features, R={spec.R} x B={spec.B} buckets "
        f"({spec.family} hash); {num_params:,} parameters, {num_params / num_params_full:.3g}x "
        f"the {num_params_full:,} of a full softmax. {train.num_points} train / "
        f"{test.num_points} test points.", flush=True)

  # ---- Loop ----------------------------------------------------------------------------
  train_seconds = 0.0
  examples = 0
  step = 0
  for epoch in range(tc.num_epochs):
    t_epoch = time.time()
    pending: list[tuple[int, jax.Array]] = []
    batches = batching.prefetch(batching.iterate_batches(
        train.X, train.Y, tc.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
        widths=widths, dense=dense))
    bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.num_epochs}",
               leave=False, mininterval=1.0, disable=not tc.progress_bar)
    for batch in bar:
      state, m = step_fn(state, batch)
      step += 1
      examples += int(batch["mask"].sum())
      pending.append((step, m["loss"]))
      if step % tc.log_every_steps == 0 or step % steps_per_epoch == 0:
        values = _check_finite(pending)
        pending = []
        elapsed = train_seconds + time.time() - t_epoch
        record = {"step": step, "epoch": epoch + 1, "loss": float(values[-1].mean()),
                  "loss_per_rep": values[-1].tolist(), "examples_per_second": examples / elapsed}
        _append_jsonl(metrics_path, record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_second']:.0f}")
    if pending:
      _check_finite(pending)
    jax.block_until_ready(state)
    train_seconds += time.time() - t_epoch
    if ev.every_epochs and (epoch + 1) % ev.every_epochs == 0 and epoch + 1 < tc.num_epochs:
      res = evaluate(state["params"], logits_fn, decoder, test, inv_prop, config, subset)
      main = res[ev.estimator]
      _append_jsonl(metrics_path, {"step": step, "epoch": epoch + 1, "eval_points":
                                   len(subset) if subset is not None else test.num_points,
                                   **{f"eval/{k}": v for k, v in main.items()}})
      print(f"epoch {epoch + 1}: loss {record['loss']:.4f}  P@1 {main['P@1']:.4f}  "
            f"P@5 {main['P@5']:.4f}  ({examples / train_seconds:.0f} train examples/s)",
            flush=True)

  # ---- Final evaluation ----------------------------------------------------------------
  t_eval = time.time()
  res = evaluate(state["params"], logits_fn, decoder, test, inv_prop, config)
  eval_seconds = time.time() - t_eval
  main = res[ev.estimator]
  results = {
      **main,
      "estimator": ev.estimator,
      "by_estimator": res,
      "train_seconds": train_seconds,
      "examples_per_second": examples / train_seconds,
      "eval_seconds": eval_seconds,
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
  }
  _append_jsonl(metrics_path, {"step": step, "final": True,
                               **{f"test/{k}": v for k, v in main.items()}})
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return results
