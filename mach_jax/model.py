"""Flax modules: one MACH repetition, and R of them as one vmapped model.

Modules live here, with the few facts about their parameters that other modules need
(the input table's name, parameter counts). A repetition is an ordinary B-way classifier;
MACH stacks R of them with ``nn.vmap`` so every parameter carries a leading axis of size R
named ``'rep'``
(``REP_AXIS``). Repetitions never see each other's parameters, which is what lets a device
that owns whole repetitions train without any collective.

Inputs:
  * sparse: a batch dict (see ``mach_jax.data.batching``) with the flattened nonzeros
    ``indices``, ``values``, ``segments`` [T] and the row mask ``mask`` [b] (its length is
    the batch size); padding has value 0, so it contributes nothing to the embedding-bag.
    ``indices`` and ``values`` may instead be [R, T], one row per repetition (the input
    hash's view, ``HashSpec.input_features``): repetition r then reads its own row;
  * dense: a float32 [b, D] array.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mach_jax import bag, initializers

REP_AXIS = "rep"
TABLE = "embedding"  # The input table's parameter name: [R, D, H] under params['reps'].
SHARED = "shared"  # With a shared input: params['shared'] holds the one [D, H] table.
# Sparse-input entries that may hold one slice per repetition (leading axis R).
PER_REP_INPUTS = ("indices", "values", "hidden_keep")


class Repetition(nn.Module):
  """One repetition: input layer into H, hidden stack, B logits.

  Attributes:
    num_features: D, the input dimension.
    num_buckets: B, the output width.
    hidden: widths of the layers after the input layer; ``hidden[0]`` is H, the input
      layer's width (an embedding-bag for sparse input, a dense layer otherwise).
    sparse_input: whether inputs are padded (indices, values) pairs.
    embedding_bag: how sparse input meets the table: 'gather' (row gather + segment-sum),
      'dense' (densify the batch, one GEMM) or 'auto' (the cheaper on XLA:CPU; the
      parameters and results are the same either way).
    dtype: computation dtype (parameters are stored in float32, the table in table_dtype).
    table_dtype: storage dtype of the sparse input table (float32 or bfloat16); it is
      cast to ``dtype`` where it is read.
    input_layer: False when the input layer is shared (``MACH.shared_input``): the
      repetition is then called on that layer's output h [b, H] and owns only the rest.

  A sparse input may carry ``hidden_keep`` [b, H]: dropout's mask, already scaled, which
  multiplies the input layer's activations (``dropout.drop_hidden``; training only).
  """

  num_features: int
  num_buckets: int
  hidden: Sequence[int] = (512,)
  sparse_input: bool = True
  embedding_bag: str = "auto"
  dtype: Any = jnp.float32
  table_dtype: Any = jnp.float32
  input_layer: bool = True

  @nn.compact
  def __call__(self, x) -> jax.Array:
    if not self.hidden:
      raise ValueError("model.hidden must name at least the input layer's width H")
    if not self.input_layer:  # x is the shared input layer's output h [b, H].
      h = x
    elif self.sparse_input:
      h = sparse_input_layer(self, x, self.num_features, self.hidden[0], self.embedding_bag,
                             self.dtype, self.table_dtype)
    else:
      h = nn.Dense(self.hidden[0], dtype=self.dtype, name="input_dense")(x)
    h = nn.relu(h)
    if isinstance(x, dict) and "hidden_keep" in x:  # Dropout's scaled mask [b, H].
      h = h * x["hidden_keep"].astype(h.dtype)
    for i, width in enumerate(self.hidden[1:]):
      h = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"hidden_{i}")(h))
    logits = nn.Dense(self.num_buckets, dtype=self.dtype, name="output")(h)
    return logits.astype(jnp.float32)


def sparse_input_layer(module: nn.Module, x, num_features: int, H: int, mode: str, dtype,
                       table_dtype) -> jax.Array:
  """The input layer's [b, H] pre-activation: ``module``'s [D, H] table ``TABLE`` and its
  bias, met by the batch's nonzeros as ``mode`` says (see ``bag.use_dense_bag``)."""
  table = module.param(TABLE, initializers.normal(stddev=0.01), (num_features, H),
                       table_dtype)
  bias = module.param("embedding_bias", nn.initializers.zeros, (H,))
  b, T = x["mask"].shape[0], x["indices"].shape[0]
  if bag.use_dense_bag(mode, b, num_features, T):
    dense = bag.densify(x["indices"], x["values"], x["segments"], b, num_features, dtype)
    return dense @ table.astype(dtype) + bias
  return bag.embedding_bag(table.astype(dtype), x["indices"], x["values"], x["segments"],
                           b) + bias


class SharedInput(nn.Module):
  """One [D, H] input table for all repetitions (``MACH.shared_input``): h [b, H]."""

  num_features: int
  H: int
  embedding_bag: str = "auto"
  dtype: Any = jnp.float32
  table_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x) -> jax.Array:
    return sparse_input_layer(self, x, self.num_features, self.H, self.embedding_bag,
                              self.dtype, self.table_dtype)


class MACH(nn.Module):
  """R independent repetitions as one model; parameters stacked on leading axis 'rep'.

  Calling it on a batch of b inputs returns logits of shape [R, b, B]: the input is
  broadcast to every repetition (``in_axes=None``), and each repetition has its own
  parameters and initialisation key (``split_rngs``).

  With ``shared_input`` (sparse input only) one [D, H] table (``params['shared']``, no
  repetition axis) feeds the R repetitions, which keep their own hidden and output layers.
  The repetitions are then coupled: on a 'rep'-sharded mesh the gradient of the shared
  layer's output h [b, H] is summed across devices (an all-reduce every step), which the
  default, per-repetition tables never need.

  With ``sequential`` the repetitions run one after another (``jax.lax.map`` over the
  same stacked parameters) instead of side by side (vmap): the same parameters and the
  same logits, but only one repetition's temporaries are live at a time. On long text the
  embedding bag's gathered rows, [R, T, H] under vmap (805 MB at R = 8, T = 98,304,
  H = 256), are most of a step's memory (experiments/bench/NOTES.md). With per-repetition
  tables, ``steps.train_step`` goes further and runs the whole step (forward, backward,
  update) one repetition at a time.
  """

  num_repetitions: int
  num_features: int
  num_buckets: int
  hidden: Sequence[int] = (512,)
  sparse_input: bool = True
  embedding_bag: str = "auto"
  dtype: Any = jnp.float32
  table_dtype: Any = jnp.float32
  shared_input: bool = False
  sequential: bool = False

  @nn.compact
  def __call__(self, x) -> jax.Array:
    in_axes = None
    if self.sparse_input and x["indices"].ndim == 2:  # Per-repetition (hashed) features.
      if self.shared_input:
        raise ValueError("a shared input table reads the features unhashed: per-repetition "
                         "(input-hashed) indices are not supported with shared_input")
      if x["indices"].shape[0] != self.num_repetitions:
        raise ValueError(f"per-repetition indices of shape {x['indices'].shape}: expected "
                         f"a leading axis of R={self.num_repetitions}")
      in_axes = ({k: 0 if k in PER_REP_INPUTS else None for k in x},)
    if self.shared_input:
      if not self.sparse_input:
        raise ValueError("shared_input needs sparse input (config.model.dense_input=False)")
      x = SharedInput(num_features=self.num_features, H=self.hidden[0],
                      embedding_bag=self.embedding_bag, dtype=self.dtype,
                      table_dtype=self.table_dtype, name=SHARED)(x)
    fields = dict(num_features=self.num_features, num_buckets=self.num_buckets,
                  hidden=tuple(self.hidden), sparse_input=self.sparse_input,
                  embedding_bag=self.embedding_bag, dtype=self.dtype,
                  table_dtype=self.table_dtype, input_layer=not self.shared_input)
    if self.sequential and not self.is_initializing():
      one = Repetition(**fields)
      per_rep = {k: v for k, v in x.items() if in_axes[0][k] == 0} if in_axes else {}
      common = {k: v for k, v in x.items() if k not in per_rep} if in_axes else x

      def run(args):
        params, mine = args
        return one.apply({"params": params}, {**common, **mine} if in_axes else common)

      return jax.lax.map(run, (self.variables["params"]["reps"], per_rep))
    stacked = nn.vmap(
        Repetition,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=in_axes,
        out_axes=0,
        axis_size=self.num_repetitions,
        axis_name=REP_AXIS,
    )
    return stacked(**fields, name="reps")(x)


def to_feature_major(params) -> dict:
  """MACH's ``params`` with the [R, D, H] input table stored feature-major, [D, R * H]
  under ``params['reps']['embedding']`` (the serving layout; ``feature_major_logits``).

  A feature id's R rows then lie side by side: one query's nonzero reads one contiguous
  R * H block instead of R blocks of H spread over the table, and the densified batch meets
  the table in one GEMM instead of R (bibtex, R = 16, H = 512: batches 1.45x faster, single
  queries p50 0.59 -> 0.55 ms; experiments/bench/NOTES.md). Not for a shared input table,
  nor for input-hashed features, whose repetitions read different rows.
  """
  table = np.asarray(params["reps"][TABLE])
  R, D, H = table.shape
  flat = np.ascontiguousarray(table.transpose(1, 0, 2)).reshape(D, R * H)
  return {**params, "reps": {**params["reps"], TABLE: jnp.asarray(flat)}}


def feature_major_logits(model: MACH, params, x) -> jax.Array:
  """Bucket logits [R, b, B], as ``model.apply`` gives them, from ``to_feature_major``'s
  params and a sparse batch dict of unhashed features (indices [T])."""
  if model.shared_input or not model.sparse_input or x["indices"].ndim != 1:
    raise ValueError("the feature-major table serves sparse, unhashed features into "
                     "per-repetition tables: use model.apply for this model")
  reps = dict(params["reps"])
  table, bias = reps.pop(TABLE), reps.pop("embedding_bias")  # [D, R * H], [R, H]
  R, H = bias.shape
  b, T, D = x["mask"].shape[0], x["indices"].shape[0], table.shape[0]
  table = table.astype(model.dtype)
  if bag.use_dense_bag(model.embedding_bag, b, D, T):
    flat = bag.densify(x["indices"], x["values"], x["segments"], b, D, model.dtype) @ table
  else:
    flat = bag.embedding_bag(table, x["indices"], x["values"], x["segments"], b)
  h = flat.reshape(b, R, H).transpose(1, 0, 2) + bias[:, None, :]  # [R, b, H]
  return heads_logits(model, reps, h)


def hashed_logits(model: MACH, params, x) -> jax.Array:
  """Bucket logits [R, b, B], as ``model.apply`` gives them, of input-hashed features.

  ``x`` holds each repetition's hashed view (indices and values [R, T], ``steps.
  model_input``). The R tables [R, D', H] are read as one [R * D', H] table by one
  embedding bag over the R * T nonzeros into R * b rows, so no repetition's table is
  copied out of the stack (run one after another, each repetition's [D', H] slice was
  copied before its bag). Gathered bags only (``bag.use_dense_bag`` false for [b, D'],
  T); the serving path of ``mach_jax.predictor``.
  """
  if model.shared_input or not model.sparse_input or x["indices"].ndim != 2:
    raise ValueError("hashed_logits serves per-repetition (input-hashed) features into "
                     "per-repetition tables: use model.apply for this model")
  reps = dict(params["reps"])
  table, bias = reps.pop(TABLE), reps.pop("embedding_bias")  # [R, D', H], [R, H]
  R, D, H = table.shape
  b = x["mask"].shape[0]
  offset = jnp.arange(R, dtype=x["indices"].dtype)[:, None]
  flat = bag.embedding_bag(table.reshape(R * D, H).astype(model.dtype),
                           (x["indices"] + offset * D).reshape(-1),
                           x["values"].reshape(-1),
                           (x["segments"][None] + offset * b).reshape(-1), R * b)
  h = flat.reshape(R, b, H) + bias[:, None, :]  # [R, b, H]
  return heads_logits(model, reps, h)


def heads_logits(model: MACH, reps: dict, h: jax.Array) -> jax.Array:
  """Logits [R, b, B] of the layers above the input table, from its pre-activation h
  [R, b, H] (the bag plus its bias); ``reps``: ``params['reps']`` without the table and
  its bias."""
  heads = nn.vmap(Repetition, variable_axes={"params": 0}, split_rngs={"params": True},
                  in_axes=0, out_axes=0, axis_size=h.shape[0], axis_name=REP_AXIS)
  return heads(num_features=model.num_features, num_buckets=model.num_buckets,
               hidden=tuple(model.hidden), sparse_input=True, dtype=model.dtype,
               input_layer=False).apply({"params": reps}, h)


def split_table(params) -> tuple[jax.Array, dict]:
  """(input table, every other parameter) of MACH's ``params``.

  The table is [R, D, H] (``params['reps']``), or [D, H] with a shared input
  (``params['shared']``).
  """
  where = SHARED if SHARED in params else "reps"
  part = dict(params[where])
  table = part.pop(TABLE)
  return table, {**params, where: part}


def join_table(table: jax.Array, rest: dict) -> dict:
  """The inverse of ``split_table``."""
  where = SHARED if SHARED in rest else "reps"
  return {**rest, where: {**rest[where], TABLE: table}}


def split_shared(tree: dict) -> tuple[dict, dict]:
  """(the per-repetition part ``{'reps': ...}``, the shared part ``{'shared': ...}`` or {})
  of a parameter tree."""
  return {k: v for k, v in tree.items() if k != SHARED}, (
      {SHARED: tree[SHARED]} if SHARED in tree else {})


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def param_bytes(params) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))


def num_params_formula(D: int, hidden: Sequence[int], out: int, R: int = 1) -> int:
  """Parameters of R copies of D -> hidden[0] -> ... -> hidden[-1] -> out, with biases."""
  widths = [D, *hidden, out]
  return R * sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def num_params_full_softmax(D: int, hidden: Sequence[int], K: int) -> int:
  """The equivalent single network with K outputs (same input layer and hidden stack)."""
  return num_params_formula(D, hidden, K, R=1)
