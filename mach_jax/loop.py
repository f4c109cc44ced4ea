"""Host-side helpers of the training loop: when to act, how long it took, whether the loss
stayed finite, and where events and results are written."""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mach_jax import sharding, whole_file


def itstime(step: int, every: int, *, last: bool = False) -> bool:
  """The one rule for every periodic action: each ``every`` steps (0: never), or at ``last``.

  Args:
    step: the count so far (steps, or epochs), 1-based.
    every: the period; 0 turns the action off (``last`` still applies).
    last: force the action (the end of an epoch, or of training).
  """
  return last or (every > 0 and step % every == 0)


class Stopwatch:
  """Training time: wall-clock time that pauses around evaluations and checkpoints' waits.

  Args:
    offset: seconds already trained (a resumed run's earlier time).
  """

  def __init__(self, offset: float = 0.0):
    self._offset, self._paused = offset, 0.0
    self._start = time.perf_counter()

  @contextlib.contextmanager
  def paused(self):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - t0

  def seconds(self) -> float:
    return self._offset + time.perf_counter() - self._start - self._paused


class NonFiniteLossError(FloatingPointError):
  pass


class LossGuard:
  """Per-step losses, fetched lazily; raises at the first step whose loss is not finite.

  Steps are dispatched asynchronously; their [R] losses stay on device until ``check``,
  which the loop calls before anything that must not see a broken state (a log line, a
  checkpoint, an evaluation).
  """

  def __init__(self):
    self._pending: list[tuple[int, jax.Array]] = []

  def add(self, step: int, loss: jax.Array) -> None:
    self._pending.append((step, loss))

  def check(self) -> np.ndarray:
    """[n, R] losses of the steps since the last check.

    Raises:
      NonFiniteLossError: naming the step and the repetitions.
    """
    pending, self._pending = self._pending, []
    return check_finite(pending)


def check_finite(pending: list[tuple[int, jax.Array]]) -> np.ndarray:
  """Stack (step, loss [R]) pairs to [n, R]; raise at the first non-finite one."""
  if not pending:
    return np.zeros((0, 0), np.float32)
  values = np.stack([sharding.to_host(l) for _, l in pending])  # [n, R]
  bad = ~np.isfinite(values)
  if bad.any():
    i = int(np.argmax(bad.any(axis=1)))
    reps = np.nonzero(bad[i])[0].tolist()
    raise NonFiniteLossError(f"non-finite loss at step {pending[i][0]} in repetitions {reps} "
                             f"(values {values[i][reps].tolist()}); lower "
                             "config.optimizer.learning_rate or set config.optimizer.clip_norm")
  return values


class JsonlWriter:
  """Appends one JSON object per line to ``path`` (process 0 only in multi-process runs)."""

  def __init__(self, path: str):
    self.path = path

  def write(self, record: dict) -> None:
    """Raises OSError naming the file when the line cannot be written (a full disk)."""
    if jax.process_index() != 0:
      return
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:  # (A line cut short is dropped by ``rewind`` when the run resumes.)
      raise OSError(e.errno, f"{self.path}: {e.strerror}: the run's log could not be "
                    "written; free space and rerun the same command (it resumes from its "
                    "last checkpoint)") from e

  def rewind(self, step: int, decays: int) -> None:
    """Drop what the run logged after its checkpoint of ``step`` (which had ``decays``
    decays): a run resuming from it logs those steps, decays and its final record again,
    so that the file reads as one uninterrupted run's (a cut last line goes too; any other
    line that is not a JSON object is dropped with a warning naming it)."""
    if jax.process_index() != 0 or not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      lines = f.readlines()
    for i, line in enumerate(lines, start=1):
      try:
        r = json.loads(line)
        if not isinstance(r, dict):
          raise ValueError("not an object")
      except ValueError:
        if line.endswith("\n"):  # Not the last line a kill cut short: say so.
          logging.warning("%s:%d: not a JSON object, dropped (%r)", self.path, i, line[:80])
        continue
      if r.get("step", 0) <= step and not r.get("final") and r.get("decay", 0) <= decays:
        kept.append(line)
    with whole_file.replacing(self.path) as f:
      f.writelines(kept)


def write_results(workdir: str, results: dict) -> None:
  """``workdir/results.json``, whole or not at all: written to a temporary file and renamed
  over the old one, so a run killed (or failing) while writing leaves the previous file or
  none. A refit reads its selection's results.json to go on; a partial one stopped it."""
  with whole_file.replacing(os.path.join(workdir, "results.json")) as f:
    json.dump(results, f, indent=2)


def eval_record(by_estimator: dict[str, dict[str, float]], main: str) -> dict[str, float]:
  """A periodic evaluation's metrics for ``metrics.jsonl``: ``eval/P@1`` ... for the run's
  estimator ``main``, ``eval/<estimator>/P@1`` ... for every other one it computed (the
  curves an estimator ablation compares, from one run)."""
  out = {f"eval/{k}": v for k, v in by_estimator[main].items()}
  for estimator, values in by_estimator.items():
    if estimator != main:
      out.update({f"eval/{estimator}/{k}": v for k, v in values.items()})
  return out


class Best:
  """The best periodic evaluation so far on ``metric`` (higher is better) and its parameters.

  ``record`` is JSON (step, epoch, value, metrics, evaluations since) so that a checkpoint
  can carry it; ``params`` is a device copy of the best parameters when ``update`` is given
  them (runs without checkpoints), else None: the checkpoint store keeps the best state.
  """

  def __init__(self, metric: str, record: dict | None = None, params=None):
    self.metric, self.record, self.params = metric, record, params

  @property
  def stale(self) -> int:
    """Evaluations since the best one."""
    return self.record["stale"] if self.record else 0

  def exhausted(self, patience: int) -> bool:
    """Whether ``patience`` (> 0) evaluations in a row have brought no new best."""
    return patience > 0 and self.stale >= patience

  def update(self, metrics: dict, step: int, epoch: int, params) -> bool:
    """Take ``metrics`` of the state at ``step``; True when it is a new best."""
    if self.record is not None and metrics[self.metric] <= self.record["value"]:
      self.record["stale"] += 1
      return False
    self.record = {"step": step, "epoch": epoch, "value": metrics[self.metric],
                   "metrics": dict(metrics), "stale": 0}
    self.params = None if params is None else jax.tree.map(jnp.copy, params)
    return True
