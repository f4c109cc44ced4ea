"""``train_and_evaluate(config, workdir)``: the training loop, and nothing else.

What it puts together lives elsewhere: the objects a config builds (``config.build``), the
state and its jitted steps (``state``), the step (``steps``), the mesh (``sharding``),
evaluation (``inference``), checkpoints (``checkpoint``, ``resume``), the model folder
(``bundle``), the loop's timing and checks (``loop``), decays (``plateau``), the refit (``refit``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from mach_jax import (
  bundle,
  checkpoint as checkpoint_lib,
  config as config_lib,
  data as data_lib,
  host_memory,
  inference,
  loop,
  metrics,
  model as model_lib,
  optim,
  plateau as plateau_lib,
  provenance,
  refit as refit_lib,
  resume,
  sharding,
  state as state_lib,
  workdir as workdir_lib,
)
from mach_jax.data import batching


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train MACH as ``config`` says, evaluate, export the model, write the results.

  Writes ``workdir/metrics.jsonl`` (one JSON object per log or evaluation event),
  ``workdir/checkpoints`` (resumed by rerunning the same command), the model folder
  ``workdir/model`` and ``workdir/results.json``; returns the results dict.

  Periodic evaluations run on the validation slice when ``data.validation_fraction`` > 0
  (the run ends with the best), else on the test split. ``train.refit``: ``refit``.

  Raises:
    workdir.WorkdirInUseError: another live run holds ``workdir``.
    workdir.WorkdirNotWritableError: ``workdir`` cannot be written (before any data is read).
  """
  t_start = time.time()
  config_lib.check_loop(config)
  sharding.initialize_distributed(config.distributed)  # (Before any other JAX call.)
  if config.train.refit:
    return refit_lib.select_and_refit(config, workdir, train_and_evaluate)
  with workdir_lib.claim(workdir, lock=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, t_start)


def _train_and_evaluate(config, workdir: str, t_start: float) -> dict[str, Any]:
  writer = loop.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))

  # ---- Input ---------------------------------------------------------------------------
  train, validation, test = data_lib.load_splits(config.data, config.train.num_epochs,
                                                 cache_dir=workdir, stream_test=True)
  counts = train.label_counts()
  config = config_lib.resolve(config, train.num_labels, counts.sum() / train.num_points,
                              train.num_features)
  tc, ev, ck = config.train, config.eval, config.checkpoint
  held = validation if validation is not None else (test := data_lib.in_memory(test))
  inv_prop = 1.0 / metrics.propensities_from_counts(counts, train.num_points,
                                                    ev.propensity_A, ev.propensity_B)
  t_data = time.time() - t_start

  # ---- Model, mesh, sharded state and steps ----------------------------------------------
  total_steps = (steps_per_epoch := -(-train.num_points // tc.batch_size)) * tc.num_epochs
  optim.check_schedule(config.optimizer, total_steps)
  setup = state_lib.create_train_state(config, train, total_steps,
                                       initialize=False).ahead(total_steps)
  spec, mesh, D, K = setup.parts.spec, setup.mesh, train.num_features, train.num_labels
  num_params = model_lib.count_params(setup.state.params)
  num_params_full = model_lib.num_params_full_softmax(D, tuple(config.model.hidden), K)
  subset = (np.random.default_rng(config.seed).choice(held.num_points, ev.subset, replace=False)
            if ev.subset and held is not None and ev.subset < held.num_points else None)

  def evaluate(params, data, rows=None) -> dict[str, dict[str, float]]:
    return inference.evaluate(params, setup.logits_fn, setup.parts.decoder, data, inv_prop,
                              config, mesh, rows)

  # ---- Resume where a previous run of this workdir stopped, or initialise ----------------
  manager = (checkpoint_lib.make_manager(workdir, ck.keep, bool(ck.best_metric), ck.background)
             if ck.enabled else None)
  step, start_epoch, start_batch, trained, examples = 0, 0, 0, 0.0, 0
  best, restored = loop.Best(ck.best_metric), None
  plateau = plateau_lib.Plateau(config, D, K, total_steps, setup)  # Compiles its steps.
  if manager is not None:
    restored = checkpoint_lib.restore_latest(
        manager, setup.state,
        check_meta=lambda meta: resume.check_resumable(meta, spec, config, workdir))
    if restored is not None:
      meta, plateau.decays = restored.meta, restored.meta.get("decays", 0)
      step, start_epoch, start_batch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
      trained, examples = meta["train_seconds"], meta["examples"]
      if validation is not None and meta.get("best"):
        best = loop.Best(ck.best_metric, meta["best"])  # Its parameters stay on disk.
      where = (f"epoch {start_epoch + 1}, batch {start_batch} of {steps_per_epoch}"
               if start_epoch < tc.num_epochs else "training already complete, evaluating")
      logging.info("resumed from %s/%d: %s", manager.directory, restored.step, where)
  writer.rewind(step, plateau.decays)  # What was logged after the checkpoint comes again.
  state = restored.state if restored is not None else setup.initial_state()
  if restored is None and tc.init_from:
    state = state._replace(params=bundle.load_params_like(tc.init_from, state.params, spec, D))
    logging.info("started from the parameters of %s", tc.init_from)
  setup = plateau.resume(setup)
  logging.info("%s", sharding.check_state_sharding(mesh, state, spec.R))
  logging.info("MACH: K=%d classes, D=%d features, R=%d x B=%d buckets (%s hash); %s "
               "parameters, %.3gx the %s of a full softmax. %d train / %d test points.",
               K, D, spec.R, spec.B, spec.family, f"{num_params:,}",
               num_params / num_params_full, f"{num_params_full:,}", train.num_points,
               getattr(test, "num_points", 0))

  def save(epoch: int, batch_in_epoch: int, seconds: float) -> None:
    checkpoint_lib.save(manager, step, state, resume.run_meta(
        step=step, epoch=epoch, batch_in_epoch=batch_in_epoch, steps_per_epoch=steps_per_epoch,
        train_seconds=seconds, examples=examples, spec=spec, config=config, best=best.record,
        decays=plateau.decays, target=target), record_files=ck.record_files)

  def decay(epoch: int) -> None:  # Back to the best state, on at the next learning rate.
    nonlocal setup, state
    state, setup, event = plateau.decay(manager, setup, best, state)  # Into state's arrays.
    writer.write({"step": step, "epoch": epoch, **event})

  if plateau.due(best) and start_epoch < tc.num_epochs:  # Stopped before its decay.
    decay(start_epoch)

  # ---- Train, with periodic logs, checkpoints and evaluations ----------------------------
  watch, guard = loop.Stopwatch(offset=trained), loop.LossGuard()
  target = resume.target_of(restored.meta if restored is not None else None, tc)
  periodic_seconds, periodic_evals, first_step_seconds, record = 0.0, 0, None, {}
  for epoch in range(start_epoch, tc.num_epochs):
    if target["reached"] or plateau.stop(best):  # (Also a resumed run that had stopped.)
      break
    skip = start_batch if epoch == start_epoch else 0
    batches = batching.prefetch(train.batches(
        tc.batch_size, shuffle=True, seed=config.seed, epoch=epoch, widths=setup.widths,
        dense=config.model.dense_input, num_shards=mesh.shape[sharding.DATA_AXIS], start=skip))
    bar = tqdm(batches, total=steps_per_epoch, initial=skip, mininterval=1.0, leave=False,
               desc=f"epoch {epoch + 1}/{tc.num_epochs}", disable=not tc.progress_bar)
    for i, batch in enumerate(bar, start=skip):
      state, m = setup.run(state, batch)
      if first_step_seconds is None:  # The first batch, compilation and one step.
        jax.block_until_ready(m)
        first_step_seconds = watch.seconds() - trained
      step += 1
      examples += int(batch["mask"].sum())
      guard.add(step, m["loss"])
      end_of_epoch = i + 1 == steps_per_epoch
      if loop.itstime(step, tc.log_every_steps, last=end_of_epoch):
        values = guard.check()
        host_memory.release()  # What the featurizer and the batches freed since the last log.
        record = {"step": step, "epoch": epoch + 1, "loss": float(values[-1].mean()),
                  "loss_per_rep": values[-1].tolist(),
                  "examples_per_second": examples / watch.seconds()}
        writer.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_second']:.0f}")
      last = end_of_epoch and epoch + 1 == tc.num_epochs
      evaluate_now = ((loop.itstime(step, ev.every_steps)
                       or end_of_epoch and loop.itstime(epoch + 1, ev.every_epochs))
                      and (not last or tc.target_metric or validation is not None))
      if manager is not None and loop.itstime(step, ck.every_steps) and not evaluate_now:
        guard.check()  # Never save a state that has gone non-finite.
        save(epoch, i + 1, watch.seconds())  # (An evaluation saves its step itself.)
      if evaluate_now:
        guard.check()
        jax.block_until_ready(state)
        seconds = watch.seconds()
        with watch.paused():
          t0 = time.time()
          main = (every := evaluate(state.params, held, subset))[ev.estimator]
          if validation is not None:
            # With checkpoints the best state is kept on disk (best_metric), not in memory.
            best.update(main, step, epoch + 1, state.params if manager is None else None)
          periodic_seconds, periodic_evals = periodic_seconds + time.time() - t0, periodic_evals + 1
          writer.write({"step": step, "epoch": epoch + 1, "eval_points":
                        len(subset) if subset is not None else held.num_points,
                        **loop.eval_record(every, ev.estimator)})
          logging.info("step %d (epoch %d): loss %.4f  %s", step, epoch + 1,
                       record.get("loss", float("nan")),  # (P@5 only with eval.k >= 5.)
                       "  ".join(f"{m} {main[m]:.4f}" for m in ("P@1", "P@5") if m in main))
          if tc.target_metric and main[tc.target_metric] >= tc.target_value:
            target.update(reached=True, step=step, epoch=epoch + 1, train_seconds=seconds,
                          achieved=main[tc.target_metric], periodic_eval_seconds=periodic_seconds,
                          unix_time=time.time())  # Saved with the checkpoint below.
          if manager is not None:
            save(epoch, i + 1, seconds)
        if plateau.due(best) and not last:
          decay(epoch + 1)
        if target["reached"] or plateau.stop(best):
          break
    guard.check()
    jax.block_until_ready(state)
  train_seconds = watch.seconds()
  if manager is not None:
    if manager.latest_step() != step:
      save(tc.num_epochs - 1, steps_per_epoch, train_seconds)
    checkpoint_lib.finish(manager)  # A background save (its failure comes out here).

  # ---- Final evaluation, model folder and results ----------------------------------------
  # Only the parameters go on: the optimizer state is freed before evaluating and exporting.
  params, state = (state.params if best.params is None else best.params), None
  if best.params is None and validation is not None and best.record and best.record["step"] != step:
    params = checkpoint_lib.restore_kept(  # Into the last parameters' arrays.
        manager, best.record["step"], setup.state._replace(params=params), ("params",)).params
  t_eval, test = time.time(), data_lib.in_memory(test)  # A test log is featurized now.
  res = evaluate(params, test) if ev.final_test and test is not None else {}
  main = res.get(ev.estimator, {})
  results = {
      **main, "estimator": ev.estimator, "by_estimator": res, "train_seconds": train_seconds,
      "examples_per_second": examples / max(train_seconds, 1e-9),
      "eval_seconds": time.time() - t_eval, "periodic_eval_seconds": periodic_seconds,
      "periodic_evals": periodic_evals, "first_step_seconds": first_step_seconds,
      "target": target, "data_seconds": t_data, "total_seconds": time.time() - t_start,
      "steps": step, "num_params": num_params, "num_params_full_softmax": num_params_full,
      "param_bytes": model_lib.param_bytes(params),  # State: parameters + optimizer state.
      "state_bytes": model_lib.param_bytes(setup.state),
      "hash_spec": spec.to_dict(), "decays": plateau.decays, "selected": best.record,
      "num_train": train.num_points, "num_test": getattr(test, "num_points", 0),
      "num_validation": validation.num_points if validation is not None else 0,
      "config": json.loads(config.to_json()), "versions": provenance.library_versions(),
      "devices": [str(d) for d in jax.devices()], "peak_rss_bytes": provenance.peak_rss_bytes(),
      "popularity_baseline": inference.popularity_baseline(counts, test, inv_prop, ev.k)
                             if res else None,
  }
  results["bundle_bytes"] = bundle.export(os.path.join(workdir, bundle.BUNDLE_DIR),
                                          params, spec, config, D, train.featurizer)
  if manager is not None:
    latest = os.path.join(str(manager.directory), str(manager.latest_step()))
    results["checkpoint_bytes"] = bundle.folder_bytes(latest)
  writer.write({"step": step, "final": True, **{f"test/{k}": v for k, v in main.items()}})
  if jax.process_index() == 0:
    loop.write_results(workdir, results)
  return results
