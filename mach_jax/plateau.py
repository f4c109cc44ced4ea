"""Decay on plateau: back to the best validation evaluation's state, on with a smaller step.

After ``config.train.decay_patience`` periodic evaluations without a new best
(``loop.Best``), the run reads the best evaluation's whole state (parameters and optimizer
moments) back from the checkpoint store and trains on with the learning rate times
``decay_factor``, at most ``max_decays`` times; early stopping
(``early_stopping_patience``) counts only once every decay is spent. The number of decays so
far is part of a checkpoint's meta, so a resumed run trains at the same rate, and a run
stopped between a plateau and its decay decays on resuming.
"""

from __future__ import annotations

from mach_jax import (
  checkpoint as checkpoint_lib,
  config as config_lib,
  loop,
  sharding,
  state as state_lib,
)


def rescaled(setup: state_lib.TrainSetup, config, scale: float, num_features: int,
             num_classes: int, total_steps: int) -> state_lib.TrainSetup:
  """``setup`` whose train step uses ``scale`` times the config's learning rate (the state's
  layout is the same: Adam's moments do not depend on the rate), compiled now
  (``TrainSetup.ahead``)."""
  c = config.copy_and_resolve_references()
  c.optimizer.learning_rate = config.optimizer.learning_rate * scale
  parts = config_lib.build(c, num_features, num_classes, total_steps)
  return setup._replace(train_step=sharding.make_train_step(
      parts, setup.mesh, setup.state, setup.first_batch)).ahead(total_steps)


class Plateau:
  """When a run decays its learning rate and when it stops early.

  Args:
    config: the run's (resolved) config.
    num_features, num_classes, total_steps: D, K and the run's steps (to rebuild the step).
    setup: the run's setup before it holds a state: every decayed step is compiled now,
      so that no compilation runs beside the state later (text WordNet's decay compiled
      its step beside a 0.8 GB state; experiments/bench/NOTES.md). None: each is compiled
      at its decay.
    decays: decays already made (a resumed run's, from its checkpoint's meta).
  """

  def __init__(self, config, num_features: int, num_classes: int, total_steps: int,
               setup: state_lib.TrainSetup | None = None, decays: int = 0):
    self.config, self.tc, self.decays = config, config.train, decays
    self.shape = (num_features, num_classes, total_steps)
    self._steps = {}  # Decays made -> the step at that rate, compiled ahead.
    if setup is not None and self.tc.decay_patience > 0:
      self._steps = {d: rescaled(setup, config, self.tc.decay_factor ** d, *self.shape
                                 ).train_step for d in range(1, self.tc.max_decays + 1)}

  @property
  def scale(self) -> float:
    """The learning rate's factor now."""
    return self.tc.decay_factor ** self.decays

  def _left(self) -> bool:
    return self.tc.decay_patience > 0 and self.decays < self.tc.max_decays

  def due(self, best: loop.Best) -> bool:
    """Whether the evaluations since the best call for a decay now."""
    return self._left() and best.record is not None and best.stale >= self.tc.decay_patience

  def stop(self, best: loop.Best) -> bool:
    """Whether to stop early: no decay left and ``early_stopping_patience`` spent."""
    return not self._left() and best.exhausted(self.tc.early_stopping_patience)

  def resume(self, setup: state_lib.TrainSetup) -> state_lib.TrainSetup:
    """``setup`` with the step at the rate of the decays made so far."""
    if not self.decays:
      return setup
    step = self._steps.get(self.decays)
    self._steps = {d: s for d, s in self._steps.items() if d > self.decays}  # Spent: freed.
    if step is not None:
      return setup._replace(train_step=step)
    return rescaled(setup, self.config, self.scale, *self.shape)

  def decay(self, manager, setup: state_lib.TrainSetup, best: loop.Best,
            state: state_lib.TrainState):
    """Read the best state back into ``state``'s arrays (donated: ``restore_kept``, which
    raises ``CheckpointLostError`` where that checkpoint is damaged) and rebuild the step
    at the next rate.

    Returns:
      (state, setup, event): the best evaluation's state, ``setup`` with the decayed step,
      and what to log (the decay's number, the step gone back to, the new learning rate).
    """
    checkpoint_lib.finish(manager)  # The save of the best step may still be writing.
    state = checkpoint_lib.restore_kept(manager, best.record["step"], state)
    self.decays += 1
    best.record["stale"] = 0
    event = {"decay": self.decays, "restored_step": best.record["step"],
             "learning_rate": self.config.optimizer.learning_rate * self.scale}
    return state, self.resume(setup), event
