"""The pure steps: one training update of R repetitions, and their logits.

Nothing here knows about meshes: ``mach_jax.sharding`` wraps these functions with
``shard_map`` so that each device runs them on its own repetitions (and batch rows).
To change the loss, edit ``mach_jax.losses``; the optimizer, ``mach_jax.optim``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mach_jax import bag, dropout, head_loss, losses, model as model_lib, optim
from mach_jax.hashing import HashSpec
from mach_jax.row_sparse_adam import touched_rows

if TYPE_CHECKING:  # state.py builds on the steps (through sharding.py); only the type here.
  from mach_jax.state import TrainState


def model_input(batch: dict[str, Any], sparse: bool, spec: HashSpec | None = None,
                input_params: jax.Array | None = None):
  """What the model is called on: the batch dict (sparse input) or its dense [b, D] matrix.

  With an input hash (``spec.input_dim`` > 0) the batch's ``indices`` and ``values`` become
  each repetition's hashed view, [R', T] (``input_params``: the rows of
  ``spec.input_params()`` of the repetitions this call owns; default all).
  """
  if not sparse:
    return batch["dense"]
  if spec is None or not spec.input_dim:
    return batch
  ids, values = spec.input_features(batch["indices"], batch["values"], jnp, input_params)
  return {**batch, "indices": ids, "values": values}


def whole_table_update(num_nonzeros: int, num_rows: int) -> bool:
  """Whether row-sparse Adam updates the whole table by a mask instead of gathering rows.

  When a batch's T nonzeros could touch all D rows (T >= D: the input hash's small tables
  under long text), gathering "the touched rows" copies the whole table and both moment
  tables out and back (three gathers and three scatters); one masked pass over them does
  the same update (experiments/bench/NOTES.md).
  """
  return num_nonzeros >= num_rows


class _Gradients(NamedTuple):
  """What ``_gradients`` gives the update: the loss and the gradient, and how the table
  (when ``table_tx`` is set) is to be updated."""
  loss: jax.Array  # [R']
  grads: Any  # The gradient of ``params``.
  params: Any  # What was differentiated: the parameters, or the gathered rows [R', U, H]
  # in the table's place (``whole`` False).
  whole: bool  # The table's gradient is whole, [R', D, H], to update by the mask ``touched``.
  touched: jax.Array | None  # bool [R', D] (whole) or row ids [R', U]; [D] / [U] when the
  # repetitions read the same ids (no input hash).


def _gradients(params, batch: dict[str, Any], *, model: model_lib.MACH, spec: HashSpec,
               loss: str, table_tx: optim.RowSparseTransform | None,
               hash_params: jax.Array | None, input_params: jax.Array | None,
               data_axis: str | None, input_dropout: float = 0.0,
               hidden_dropout: float = 0.0, step: jax.Array | None = None,
               stacked: tuple[jax.Array, jax.Array] | None = None) -> _Gradients:
  """The per-repetition loss of ``batch`` and its gradient (``train_step``'s first half).

  ``stacked``: (the [R, D, H] table, r) when ``params`` is repetition r's slice of it (one
  repetition at a time); a whole-table gradient then reads the table where it lies
  (``_whole_table_in_place``).
  """
  label_mask = batch["labels"] >= 0
  buckets = spec.buckets(batch["labels"], jnp, params=hash_params)  # [R, b, L]
  x = model_input(batch, model.sparse_input, spec, input_params)
  if input_dropout or hidden_dropout:
    seeds = jnp.asarray(spec.input_params()) if input_params is None else input_params
  if input_dropout:
    x = dropout.drop_inputs(x, input_dropout, step, seeds, data_axis)
  if hidden_dropout:
    x = dropout.drop_hidden(x, hidden_dropout, step, seeds, model.hidden[0], data_axis)
  whole, touched, sliced = False, None, False
  if table_tx is not None:
    table, rest = model_lib.split_table(params)  # [R', D, H], or [D, H] when shared.
    shared = table.ndim == 2
    D = table.shape[-2]
    # Entries with value 0 (padding) touch nothing; they map to the zero row of id D.
    ids = jnp.where(x["values"] != 0, x["indices"], D)  # [T], or [R', T] when hashed.
    whole = whole_table_update(ids.shape[-1], D) or not table_tx.lazy
    if whole:
      # The batch may touch every row, or every row moves (not lazy): differentiate and
      # update the whole table; a lazy update keeps the untouched rows (and their moments)
      # by the mask ``touched`` rather than gathering rows.
      present = lambda i: jnp.zeros(D + 1, bool).at[i].set(True)[:D]
      touched = present(ids) if ids.ndim == 1 else jax.vmap(present)(ids)  # [D] or [R', D]
      model = model.clone(embedding_bag=bag.gathered_rows_bag(model.embedding_bag))
      if stacked is not None and _reads_in_place(model, stacked[0], x):
        per_rep_loss, grads = _whole_table_in_place(stacked, rest, x, buckets, label_mask,
                                                    batch["mask"], model=model, loss=loss)
        return _Gradients(per_rep_loss, grads, params, whole, touched)
    else:
      # Slots for the rows: the host's count (data.batching.touched_rows) when the batch
      # carries it, else one per nonzero; at least one is padding (id D), read only by
      # nonzeros of value 0: it clips to row D - 1 (a zero fill costs a pass over the rows).
      size = batch["rows"].shape[-1] if "rows" in batch else min(ids.shape[-1], D) + 1
      touch = functools.partial(touched_rows, num_rows=D, size=size)
      if ids.ndim == 1:  # The features' own ids (no input hash, no dropout): the host's.
        touched, local_ids = (batch["rows"], batch["local"]) if "rows" in batch else touch(ids)
        rows = jnp.take(table, touched, axis=0 if shared else 1, mode="clip")
      else:
        touched, local_ids = jax.vmap(touch)(ids)
        rows = jax.vmap(functools.partial(jnp.take, axis=0, mode="clip"))(table, touched)
      params = model_lib.join_table(rows, rest)
      x = {**x, "indices": local_ids}
      # The same module over the gathered rows: a table of `size` rows.
      model = model.clone(num_features=size,
                          embedding_bag=bag.gathered_rows_bag(model.embedding_bag))
      b, T = x["mask"].shape[0], x["indices"].shape[-1]
      sliced = (not shared and not bag.use_dense_bag(model.embedding_bag, b, size, T)
                and head_loss.slice_rows(rows.shape[0], b, model.num_buckets) < b)

  def loss_fn(params):
    if sliced:  # The layers above the table over slices of the batch (head_loss).
      table, rest = model_lib.split_table(params)
      heads = dict(rest["reps"])
      bias = heads.pop("embedding_bias")  # [R', H]
      bag_of = lambda t, i, v: bag.embedding_bag(t.astype(model.dtype), i, v, x["segments"], b)
      per_rep = lambda a: 0 if a.ndim == 2 else None
      h = jax.vmap(bag_of, in_axes=(0, per_rep(x["indices"]), per_rep(x["values"])))(
          table, x["indices"], x["values"]) + bias[:, None]
      keep = x.get("hidden_keep")
      sums, count = head_loss.head_loss_sums(model, heads, h if keep is None else h * keep,
                                             buckets, label_mask, batch["mask"], loss)
    else:
      logits = model.apply({"params": params}, x)
      sums, count = losses.mach_loss_sums(loss, logits, buckets, label_mask, batch["mask"])
    if data_axis is not None:
      count = jax.lax.psum(count, data_axis)
    return sums / jnp.maximum(count, 1.0)

  per_rep_loss, pullback = jax.vjp(loss_fn, params)
  (grads,) = pullback(jnp.ones_like(per_rep_loss))
  if data_axis is not None:
    per_rep_loss = jax.lax.psum(per_rep_loss, data_axis)
  return _Gradients(per_rep_loss, grads, params, whole, touched)


def _reads_in_place(model: model_lib.MACH, table: jax.Array, x: dict[str, Any]) -> bool:
  """Whether ``_whole_table_in_place`` serves this step: a gathered bag (not densified)
  over a stacked table of the computation's dtype, with ids that fit int32."""
  R, D, _ = table.shape
  b, T = x["mask"].shape[0], x["indices"].shape[-1]
  return (table.dtype == model.dtype and R * D < 2**31 and
          not bag.use_dense_bag(model.embedding_bag, b, D, T))


def _whole_table_in_place(stacked: tuple[jax.Array, jax.Array], rest, x: dict[str, Any],
                          buckets: jax.Array, label_mask: jax.Array, mask: jax.Array, *,
                          model: model_lib.MACH, loss: str) -> tuple[jax.Array, Any]:
  """One repetition's loss [1] and gradient, its [D, H] table read inside the stack.

  The embedding bag reads the stacked [R, D, H] table as one [R * D, H] table at ids
  offset by r * D; the loss is differentiated with respect to the bag's output [b, H] and
  the layers above it, and the table's gradient [D, H] is the output's gradient pulled
  back through the bag (``bag.embedding_bag_grad``). Differentiated with respect to its
  own slice, the slice was copied out of the stack first, every repetition of every step
  (text WordNet: [32768, 256], about 41 ms of a 380 ms step; experiments/bench/NOTES.md).

  Args:
    stacked: (table [R, D, H], r).
    rest: repetition r's other parameters (``model_lib.split_table``), each [1, ...].
    x: the sparse model input; ``indices`` and ``values`` [T] or [1, T].
    buckets, label_mask, mask: as ``losses.mach_loss_sums`` takes them.
  """
  table, r = stacked
  R, D, H = table.shape
  b = mask.shape[0]
  row = lambda a: a[0] if a.ndim == 2 else a
  ids, values, segments = row(x["indices"]), row(x["values"]), x["segments"]
  out = bag.embedding_bag(table.reshape(R * D, H), ids + r * D, values, segments, b)
  heads = dict(rest["reps"])
  bias = heads.pop("embedding_bias")  # [1, H]
  keep = x.get("hidden_keep")  # Dropout's [1, b, H]: relu(h) * keep = relu(h * keep).

  def loss_fn(heads, bias, out):
    h = (out + bias[0])[None]  # [1, b, H]
    sums, count = head_loss.head_loss_sums(model, heads, h if keep is None else h * keep,
                                           buckets, label_mask, mask, loss)
    return sums / jnp.maximum(count, 1.0)

  per_rep_loss, pullback = jax.vjp(loss_fn, heads, bias, out)
  d_heads, d_bias, d_out = pullback(jnp.ones_like(per_rep_loss))
  d_table = bag.embedding_bag_grad(d_out, ids, values, segments, D)  # [D, H]
  rest_grads = {**rest, "reps": {**d_heads, "embedding_bias": d_bias}}
  return per_rep_loss, model_lib.join_table(d_table[None], rest_grads)


def train_step(state: TrainState, batch: dict[str, Any], *, model: model_lib.MACH,
               tx: optax.GradientTransformation, spec: HashSpec, loss: str,
               table_tx: optim.RowSparseTransform | None = None,
               hash_params: jax.Array | None = None, input_params: jax.Array | None = None,
               data_axis: str | None = None, input_dropout: float = 0.0,
               hidden_dropout: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of the repetitions in ``state``. Returns (new state, metrics).

  Labels are hashed here, on device, per repetition (``hash_params``: the rows of
  ``spec.params()`` of the repetitions this call owns; default all), and so are the input
  features when ``spec.input_dim`` > 0 (``input_params``, see ``model_input``). The
  gradient is pulled back from the per-repetition loss vector with a cotangent of ones, so
  no scalar sum over 'rep' appears (that would be a cross-device reduction under sharding).

  Under ``shard_map`` with ``data_axis`` set, ``batch`` is this device's block of rows: the
  row count is summed over the axis so the loss is the global mean, and the gradient of the
  parameters (invariant over 'data') is summed over it by JAX itself (check_vma) -- the only
  collective of the step.

  With ``table_tx`` the step differentiates with respect to the input-table rows the batch
  touches instead of the whole table (the batch's ``rows`` and ``local`` when it carries
  them, ``data.batching.touched_rows``; else ``touched_rows`` here, padded to one slot per
  nonzero), and updates only those rows with row-sparse Adam; when the batch could touch
  every row
  (``whole_table_update``) it differentiates the whole table and updates the touched rows
  by a mask, with the same result.

  With ``model.sequential`` (per-repetition tables) the whole step, forward, backward and
  update, runs one repetition at a time (``_one_repetition_at_a_time``).

  ``input_dropout`` > 0 drops each nonzero of the batch for each repetition with that
  probability (``dropout.drop_inputs``), ``hidden_dropout`` > 0 each of the input layer's H
  activations (``dropout.drop_hidden``); sparse input only; evaluation never drops.

  A shared input layer (``model.shared_input``) is invariant over 'rep': its gradient is the
  sum of every repetition's, which under ``shard_map`` JAX completes with a psum over 'rep'
  of the layer's output gradient, [b, H] per step (the one collective a 'rep' mesh then
  has; counted in tests/test_shared_input.py).

  Metrics: ``loss`` [R], per repetition. (No gradient norm: it would cost a transpose of the
  table's gradient that nothing reads.)
  """
  if data_axis is not None and model.sequential:
    raise ValueError("config.model.sequential_reps=True runs on meshes without data "
                     "parallelism: set the mesh's 'data' axis to 1 (repetitions over 'rep' "
                     "only), or sequential_reps=False")
  if data_axis is not None and table_tx is not None:
    raise ValueError("config.optimizer.row_sparse=True runs on meshes without data "
                     "parallelism (each device's rows of a batch touch their own table rows): "
                     "set the mesh's 'data' axis to 1, or row_sparse=False")
  for name, rate in (("input_dropout", input_dropout), ("hidden_dropout", hidden_dropout)):
    if rate and (not model.sparse_input or model.shared_input):
      raise ValueError(f"config.train.{name}={rate} draws a mask per repetition over sparse "
                       "input: it needs config.model.dense_input=False and "
                       f"shared_input=False (or {name}=0)")
  if model.sequential and not model.shared_input:
    return _one_repetition_at_a_time(state, batch, model=model, tx=tx, spec=spec, loss=loss,
                                     table_tx=table_tx, hash_params=hash_params,
                                     input_params=input_params, input_dropout=input_dropout,
                                     hidden_dropout=hidden_dropout)
  g = _gradients(state.params, batch, model=model, spec=spec, loss=loss, table_tx=table_tx,
                 hash_params=hash_params, input_params=input_params, data_axis=data_axis,
                 input_dropout=input_dropout, hidden_dropout=hidden_dropout, step=state.step)
  table_opt_state = state.table_opt_state
  if table_tx is None:
    updates, opt_state = optim.update_states(tx, g.grads, state.opt_state, g.params)
    params = optax.apply_updates(g.params, updates)
  else:
    table, rest = model_lib.split_table(state.params)
    row_grads, rest_grads = model_lib.split_table(g.grads)
    updates, opt_state = optim.update_states(tx, rest_grads, state.opt_state, rest)
    apply = table_tx.dense_update if g.whole else table_tx.update
    if table.ndim == 2:  # Shared.
      table, table_state = apply(table, g.touched, row_grads,
                                 table_opt_state[model_lib.SHARED])
      table_opt_state = {model_lib.SHARED: table_state}
    else:
      table, table_opt_state = jax.vmap(
          apply, in_axes=(0, 0 if g.touched.ndim == 2 else None, 0, 0))(
              table, g.touched, row_grads, table_opt_state)
    params = model_lib.join_table(table, optax.apply_updates(rest, updates))
  new_state = state._replace(step=state.step + 1, params=params, opt_state=opt_state,
                             table_opt_state=table_opt_state)
  return new_state, {"loss": g.loss}


def _one_repetition_at_a_time(state: TrainState, batch: dict[str, Any], *,
                              model: model_lib.MACH, tx: optax.GradientTransformation,
                              spec: HashSpec, loss: str,
                              table_tx: optim.RowSparseTransform | None,
                              hash_params: jax.Array | None, input_params: jax.Array | None,
                              input_dropout: float = 0.0, hidden_dropout: float = 0.0
                              ) -> tuple[TrainState, dict[str, jax.Array]]:
  """``train_step`` of R' independent repetitions as a loop over them.

  Iteration r runs the step of a one-repetition model on repetition r's slice of the state
  (every leaf but ``step`` is [R', ...]) and writes the new slice back in place: the same
  update as all R' at once, with one repetition's temporaries live instead of R', its
  table's gradient [D, H] among them. With row-sparse tables (``table_tx``) only the table
  is updated in the loop; the other parameters' gradients, small beside it, come out of
  the loop stacked and are updated once after it, every repetition at once (updated in the
  loop, XLA copied their stacked Adam moments twice per repetition).
  """
  one = model.clone(num_repetitions=1, sequential=False)
  if hash_params is None:
    hash_params = jnp.asarray(spec.params())
  if input_params is None:
    input_params = jnp.asarray(spec.input_params())

  def body(carry, r):
    params, opt_state, table_opt_state = carry
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, r, 1)
    put = lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v, r, 0)
    mine = jax.tree.map(take, params)
    g = _gradients(mine, batch, model=one, spec=spec, loss=loss, table_tx=table_tx,
                   hash_params=take(hash_params), input_params=take(input_params),
                   data_axis=None, input_dropout=input_dropout,
                   hidden_dropout=hidden_dropout, step=state.step,
                   stacked=None if table_tx is None else (model_lib.split_table(params)[0], r))
    if table_tx is None:
      updates, new_opt = optim.update_states(tx, g.grads, jax.tree.map(take, opt_state),
                                             g.params)
      params = jax.tree.map(put, params, optax.apply_updates(g.params, updates))
      return (params, jax.tree.map(put, opt_state, new_opt), None), (g.loss[0], None)
    table, rest = model_lib.split_table(params)
    row_grads, rest_grads = model_lib.split_table(g.grads)
    touched = g.touched[0] if g.touched.ndim == 2 else g.touched  # Hashed, or not.
    if g.whole:
      table, table_opt_state = table_tx.dense_update_at(table, r, touched, row_grads[0],
                                                        table_opt_state)
    else:  # With the rows the forward gathered, [U, H]: not gathered again.
      table, table_opt_state = table_tx.update_at(
          table, r, touched, row_grads[0], table_opt_state, model_lib.split_table(g.params)[0][0])
    params = model_lib.join_table(table, rest)
    return (params, opt_state, table_opt_state), (g.loss[0], jax.tree.map(
        lambda a: a[0], rest_grads))

  carry = (state.params, state.opt_state, state.table_opt_state)
  (params, opt_state, table_opt_state), (per_rep_loss, rest_grads) = jax.lax.scan(
      body, carry, jnp.arange(model.num_repetitions))
  if table_tx is not None:  # The other parameters, every repetition at once.
    table, rest = model_lib.split_table(params)
    updates, opt_state = optim.update_states(tx, rest_grads, opt_state, rest)
    params = model_lib.join_table(table, optax.apply_updates(rest, updates))
  new_state = state._replace(step=state.step + 1, params=params, opt_state=opt_state,
                             table_opt_state=table_opt_state)
  return new_state, {"loss": per_rep_loss}


def logits_step(params, batch: dict[str, Any], *, model: model_lib.MACH,
                spec: HashSpec | None = None, input_params: jax.Array | None = None
                ) -> jax.Array:
  """Bucket logits [R, b, B] of every repetition in ``params``."""
  return model.apply({"params": params},
                     model_input(batch, model.sparse_input, spec, input_params))
