"""The training state, and the one path that sets a run up: config + data -> state + steps.

``TrainState`` is a plain pytree with the same four fields for every config; every leaf but
``step`` has the repetition axis first, so the state shards on 'rep' and checkpoints as one
tree. ``create_train_state`` is what ``train_and_evaluate``, the benchmarks and the tests
call to get the mesh, the initial state and the jitted steps of a config.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from mach_jax import (
  config as config_lib,
  host_memory,
  model as model_lib,
  optim,
  sharding,
  steps,
)
from mach_jax.data import batching
from mach_jax.hashing import IDENTITY, HashSpec


class TrainState(NamedTuple):
  """Everything a training run carries from step to step.

  Attributes:
    step: int32 [], steps taken.
    params: the model's parameters, every leaf [R, ...] (but a shared input layer's,
      ``params['shared']``).
    opt_state: the optax state of ``Parts.tx`` (vmapped: every leaf [R, ...]; see
      ``optim.init_states`` for a shared input layer), over every parameter, or over every
      parameter but the input table when ``table_opt_state`` is set.
    table_opt_state: row-sparse Adam's state of the input table ([R, D, H] moments; a
      shared table's [D, H] ones under the key 'shared'), or None.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  table_opt_state: optim.RowSparseAdamState | None


# The initialisation program runs once, so on XLA:CPU it is compiled for compile time: LLVM
# optimisation level 1 instead of 2 roughly halves its compile time and gives bit-identical
# values (pinned in tests/test_train.py; figures in experiments/bench/NOTES.md).
INIT_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def _init_fn(model: model_lib.MACH, tx: optax.GradientTransformation,
             table_tx: optim.RowSparseTransform | None, batch: dict[str, Any],
             spec: HashSpec | None) -> Callable[[jax.Array], TrainState]:
  """rng -> the initial ``TrainState`` (parameters, and optimizer states per repetition)."""
  x = steps.model_input(jax.tree.map(np.asarray, batch), model.sparse_input, spec)

  def init(rng):
    params = model.init(rng, x)["params"]
    if table_tx is None:
      return TrainState(jnp.zeros((), jnp.int32), params, optim.init_states(tx, params), None)
    table, rest = model_lib.split_table(params)
    table_state = ({model_lib.SHARED: table_tx.init(table)} if model.shared_input
                   else jax.vmap(table_tx.init)(table))
    return TrainState(jnp.zeros((), jnp.int32), params, optim.init_states(tx, rest),
                      table_state)
  return init


def init_program(model: model_lib.MACH, tx: optax.GradientTransformation,
                 table_tx: optim.RowSparseTransform | None, rng: jax.Array,
                 batch: dict[str, Any], mesh: Mesh | None = None,
                 spec: HashSpec | None = None):
  """The compiled program that makes the initial state from a key like ``rng``.

  With a ``mesh`` it writes the state directly in its sharded layout (split on 'rep').
  Its ``memory_analysis()`` is what initialising costs beside the state itself
  (``experiments.bench.step_profile``). ``spec`` is needed when it has an input hash
  (``spec.input_dim`` > 0).
  """
  init = _init_fn(model, tx, table_tx, batch, spec)
  if mesh is None:
    jitted, platform = jax.jit(init), jax.default_backend()
  else:
    shardings = sharding.state_shardings(mesh, jax.eval_shape(init, rng))
    jitted, platform = jax.jit(init, out_shardings=shardings), mesh.devices.flat[0].platform
  options = INIT_CPU_COMPILER_OPTIONS if platform == "cpu" else None
  return jitted.lower(rng).compile(compiler_options=options)


def init_state(model: model_lib.MACH, tx: optax.GradientTransformation,
               table_tx: optim.RowSparseTransform | None, rng: jax.Array,
               batch: dict[str, Any], mesh: Mesh | None = None,
               abstract: bool = False, spec: HashSpec | None = None) -> TrainState:
  """Parameters from ``rng``; optimizer states initialised per repetition (``init_program``).

  The values do not depend on the mesh (JAX's partitionable threefry RNG). ``abstract``
  (with a ``mesh``) returns its shapes, dtypes and shardings only (a restore target that
  costs no memory).
  """
  if abstract and mesh is not None:
    shapes = jax.eval_shape(_init_fn(model, tx, table_tx, batch, spec), rng)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, sharding.state_shardings(mesh, shapes))
  return init_program(model, tx, table_tx, rng, batch, mesh, spec)(rng)


# A run of at least this many steps also compiles, ahead, its step for the next wider
# batch: the 1M catalogue's log met its first at step 957 (of 9,756), and compiling it
# then held 90 MB more for 14 s, the run's peak (experiments/bench/NOTES.md).
AHEAD_WIDER_STEPS = 1000


class CompiledStep:
  """A jitted step whose programs for some batch layouts were compiled ahead
  (``TrainSetup.ahead``).

  Batches of those layouts run their compiled program; any other (a rarer, wider batch)
  runs the jitted function, which compiles it then. ``lower`` is the jitted one's. After
  the first run of each layout, freed host memory is handed back (``host_memory.release``):
  a decayed step's first runs after a restore left about 100 MB with the allocator until
  the next release (a short text run: peak RSS 1,544 -> 1,506 MB; experiments/bench/NOTES.md).
  """

  def __init__(self, jitted: Callable, state, batches: list[dict[str, jax.Array]]):
    self.jitted = jitted
    self.compiled = {_layout(b): jitted.lower(state, b).compile() for b in batches}
    self.ran: set[tuple] = set()  # The layouts run at least once.

  def __call__(self, state, batch):
    layout = _layout(batch)
    out = self.compiled.get(layout, self.jitted)(state, batch)
    if layout not in self.ran:
      self.ran.add(layout)
      jax.block_until_ready(out)
      host_memory.release()
    return out

  def lower(self, *args, **kwargs):
    return self.jitted.lower(*args, **kwargs)


def _layout(batch: dict[str, Any]) -> tuple:
  return tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))


class TrainSetup(NamedTuple):
  """A config made ready to train: see ``create_train_state``."""
  parts: config_lib.Parts
  mesh: Mesh
  widths: Any  # data.batching.Widths: the fixed batch shapes.
  first_batch: dict[str, np.ndarray]
  state: TrainState  # The initial state, or its abstract shape (initialize=False).
  train_step: Callable  # jit(state, batch) -> (state, {'loss': [R]}), state donated.
  logits_fn: Callable  # jit(params, batch) -> [R, b, B].
  batch_shardings: Any

  def init_program(self):
    """The compiled program of the initial state (``init_program``), a function of the key."""
    p = self.parts
    return init_program(p.model, p.tx, p.table_tx, jax.random.key(p.config.seed),
                        self.first_batch, self.mesh, p.spec)

  def initial_state(self) -> TrainState:
    """The initial state (computed now; the same values as ``initialize=True`` gives)."""
    state = jax.block_until_ready(self.init_program()(jax.random.key(self.parts.config.seed)))
    host_memory.release()  # The initialisation's temporaries.
    return state

  def ahead(self, total_steps: int = 0) -> TrainSetup:
    """This setup with its step compiled now (``CompiledStep``), for the first batch's
    layout and, in a run of ``total_steps`` >= ``AHEAD_WIDER_STEPS``, for the next wider
    one (``batching.widened``: nonzeros and rows) and the one with only more rows.

    A run calls it before it makes or reads its state, so that the compiler's memory and
    the state's never add up (``products.py:quarter``: 72 MB less peak RSS over its first
    60 steps; experiments/bench/NOTES.md).
    """
    batches, shards = [self.first_batch], self.mesh.shape[sharding.DATA_AXIS]
    if total_steps >= AHEAD_WIDER_STEPS and "indices" in self.first_batch:
      batches.append(batching.widened(self.first_batch, shards))
      if "rows" in self.first_batch:
        batches.append(batching.widened(self.first_batch, shards, nonzeros=False))
    step = CompiledStep(self.train_step, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state),
        [self.put(b) for b in batches])
    host_memory.release()  # The compiler's.
    return self._replace(train_step=step)

  def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A host batch as global arrays in the step's layout."""
    return sharding.put(batch, self.batch_shardings)

  def run(self, state: TrainState, batch: dict[str, np.ndarray]):
    """One step on a host batch; waits for it where the mesh needs that (see sharding)."""
    state, metrics = self.train_step(state, self.put(batch))
    if sharding.must_sync_each_step(self.mesh):
      jax.block_until_ready(metrics)
    return state, metrics


def rows_on_host(parts: config_lib.Parts, widths: batching.Widths, dense: bool) -> bool:
  """Whether training batches of ``widths`` carry the input-table rows they touch, found on
  the host (``batching.touched_rows``): with row-sparse Adam over sparse input, when a
  batch cannot touch the whole table (``steps.whole_table_update``) and untouched rows
  stay as they are (``lazy``)."""
  if parts.table_tx is None or dense or not parts.table_tx.lazy:
    return False
  D = parts.spec.input_dim or parts.model.num_features
  return not steps.whole_table_update(widths.nnz, D)


def create_train_state(config, source, total_steps: int | None = None,
                       mesh_devices=None, initialize: bool = True) -> TrainSetup:
  """Build, place and initialise everything a run of ``config`` on ``source`` needs.

  Args:
    config: shaped like ``default_config()``.
    source: training data (``XCData`` or ``QueryLog``): ``num_points``, ``num_features``,
      ``num_labels``, ``widths(b)``, ``first_batch(...)``.
    total_steps: training steps in all (default: the config's epochs over ``source``).
    mesh_devices: the devices of the mesh (default: all).
    initialize: compute the initial state; False leaves ``TrainSetup.state`` abstract, for a
      run about to restore a checkpoint (it then never holds two states at once).

  Returns:
    A ``TrainSetup``.
  """
  tc = config.train
  if config.eval.k > source.num_labels:  # (Found at the first evaluation: after an epoch.)
    raise ValueError(f"config.eval.k={config.eval.k}: the data has K={source.num_labels} "
                     "classes; evaluations rank at most K: lower eval.k")
  if config.model.hash_family != IDENTITY and config.model.B > source.num_labels:
    raise ValueError(f"config.model.B={config.model.B}: more buckets than the data's "
                     f"K={source.num_labels} classes; lower model.B (0: derived from the data)")
  if total_steps is None:
    total_steps = -(-source.num_points // tc.batch_size) * tc.num_epochs
  parts = config_lib.build(config, source.num_features, source.num_labels, total_steps)
  check_decoding(config, parts)
  mesh_spec = config.mesh if parts.spec.family != IDENTITY else (("data", 1), ("rep", 1))
  mesh = sharding.make_mesh(mesh_spec, parts.spec.R, tc.batch_size, devices=mesh_devices)
  shards = mesh.shape[sharding.DATA_AXIS]
  widths = source.widths(tc.batch_size // shards)
  if rows_on_host(parts, widths, config.model.dense_input):
    widths = source.widths(tc.batch_size // shards, distinct=True)
  first = source.first_batch(tc.batch_size, widths, dense=config.model.dense_input,
                             num_shards=shards)
  state = init_state(parts.model, parts.tx, parts.table_tx, jax.random.key(config.seed),
                     first, mesh, abstract=not initialize, spec=parts.spec)
  return TrainSetup(parts, mesh, widths, first, state,
                    sharding.make_train_step(parts, mesh, state, first),
                    sharding.make_logits_fn(parts, mesh, state.params, first),
                    sharding.batch_shardings(mesh, first))


def check_decoding(config, parts: config_lib.Parts) -> None:
  """Refuse decoding settings that the first evaluation, an epoch later, would refuse:
  ``eval.min_count`` above R, candidate decoding that cannot rank ``eval.k`` classes.

  Raises:
    ValueError: naming ``eval.min_count``, ``eval.candidates_m`` or ``eval.k``.
  """
  ev, spec = config.eval, parts.spec
  if not 1 <= ev.min_count <= spec.R:
    raise ValueError(f"config.eval.min_count={ev.min_count}: expected 1 <= min_count <= "
                     f"R={spec.R} (repetitions a candidate is found in)")
  if ev.decode != "candidates":
    return
  if not 1 <= ev.candidates_m <= spec.B:
    raise ValueError(f"config.eval.candidates_m={ev.candidates_m}: expected 1 <= m <= "
                     f"B={spec.B} (buckets probed per repetition)")
  if parts.decoder.max_k < ev.k:
    raise ValueError(f"config.eval.k={ev.k}: candidate decoding with candidates_m="
                     f"{ev.candidates_m} finds at most {parts.decoder.max_k} classes a point "
                     f"(R={spec.R} repetitions' top-m buckets); raise config.eval.candidates_m "
                     "or lower eval.k")
