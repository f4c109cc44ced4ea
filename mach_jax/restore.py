"""Reading checkpoints back: the newest one that reads, one read in place, one kept to go
back to; a checkpoint that cannot be read is passed over (``restore_latest``) or set aside
and trained again (``restore_kept``).

Part of the checkpoint store (``mach_jax.checkpoint``, which writes them and re-exports
these names). Before a checkpoint's arrays are read its files are checked against the
record its save wrote (``DIGESTS_FILE``, ``file_digests``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import TYPE_CHECKING, Any, Callable

import jax
from absl import logging

from mach_jax import file_digests, host_memory, sharding
from mach_jax.array_store import (
  LayoutMismatch,
  abstract_like,
  orbax as _orbax,
  read_in_place,
  restore_args,
)

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

__all__ = ["DIGESTS_FILE", "CheckpointLostError", "Restored", "check_files", "restore_in_place",
           "restore_kept", "restore_latest"]

DIGESTS_FILE = "file_digests.json"  # In a checkpoint's folder, beside orbax's own files.


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  meta: dict


def restore_latest(manager: ocp.CheckpointManager, target: Any,
                   check_meta: Callable[[dict], None] | None = None,
                   only: int | None = None, in_place: bool = True) -> Restored | None:
  """Restore the newest checkpoint that reads back completely onto ``target``'s shardings.

  ``only``: consider that step alone (e.g. the best one a run recorded). A ``TrainState``
  of ``jax.ShapeDtypeStruct``s (a run resuming) is read a piece at a time into arrays
  allocated for it (``restore_in_place``), not whole: orbax's restore holds the state
  twice over while it reads. ``in_place=False`` always restores whole.

  ``check_meta`` sees each checkpoint's metadata before its state is read, and may raise to
  refuse it (a different model, say); that error propagates. A checkpoint that fails to
  restore (damaged or truncated files) is reported with a warning naming its folder, and
  the next older one is tried. Returns None when there is no checkpoint at all; raises when
  checkpoints exist but none can be restored.
  """
  ocp = _orbax()
  manager.reload()
  steps = sorted(manager.all_steps(), reverse=True) if only is None else [only]
  in_place = in_place and hasattr(target, "_fields") and all(
      isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(target))
  errors = []
  for step in steps:
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:
      meta, early = None, e
    if meta is not None and check_meta is not None:
      check_meta(dict(meta))
    try:
      if meta is None:
        raise early
      if not in_place:  # (restore_in_place checks the files itself.)
        check_files(manager, step)
      state = (restore_in_place(manager, step, target) if in_place else manager.restore(
          step, args=ocp.args.Composite(state=restore_args(target))).state)
      error = None
    except Exception as e:  # orbax/tensorstore raise many types for damaged files.
      error = e
    # Every process passes it over, or none does: they would go on from different steps.
    if not sharding.on_every_process(error is None):
      error = error or RuntimeError("another process could not restore it")
      aside = _set_aside(manager, step) if jax.process_index() == 0 else ""
      sharding.on_every_process(True)  # (Moved aside before any process looks again.)
      errors.append(_unrestorable(manager, step, error, f"{aside}; falling back to the "
                                  "previous checkpoint"))
      continue
    host_memory.release()
    return Restored(step=step, state=state, meta=dict(meta))
  if errors:
    raise RuntimeError("no checkpoint could be restored:\n" + "\n".join(errors))
  return None


def check_files(manager: ocp.CheckpointManager, step: int) -> None:
  """Refuse checkpoint ``step`` (``file_digests.DamagedFolderError``, naming the file) if a
  file differs from its save's record; one without a record (written by an older version,
  or with ``record_files`` off) passes."""
  file_digests.check_record(os.path.join(str(manager.directory), str(step)), DIGESTS_FILE)


def _set_aside(manager: ocp.CheckpointManager, step: int, why: str = "damaged") -> str:
  """Rename a checkpoint's folder (unreadable, or newer than one that is) out of the
  manager's sight, kept for a look, or the run could not save that step again; says where
  it went (nothing if it is gone already)."""
  folder = os.path.join(str(manager.directory), str(step))
  if not os.path.isdir(folder):  # (Passed over by a restore within this one.)
    return ""
  aside = next(f"{folder}.{why}{i or ''}" for i in range(1000)
               if not os.path.exists(f"{folder}.{why}{i or ''}"))
  os.rename(folder, aside)
  manager.reload()
  return f" (moved to {aside})"


def _unrestorable(manager: ocp.CheckpointManager, step: int, e: Exception, then: str) -> str:
  """Warn that checkpoint ``step`` could not be restored (``e``), adding ``then``; the
  message without it."""
  path = os.path.join(str(manager.directory), str(step))
  msg = f"checkpoint {path} could not be restored ({type(e).__name__}: {str(e)[:300]})"
  warnings.warn(msg + then, RuntimeWarning)
  return msg


class CheckpointLostError(RuntimeError):
  """A checkpoint the run had to go back to cannot be read; it and every newer one were
  moved aside, so that the same command resumes before it and trains the lost steps again
  (the same numbers: an exact resume). ``experiments.train`` does so once by itself."""


def restore_kept(manager: ocp.CheckpointManager, step: int, state: Any,
                 fields: tuple[str, ...] | None = None) -> Any:
  """``restore_in_place`` of a checkpoint a run kept to go back to (its best evaluation's,
  for a decay or for the model it ends with).

  Raises:
    CheckpointLostError: the checkpoint could not be read (a damaged file, say). Without
      this the run could never finish: every rerun would resume after it and fail here
      again. It is moved aside as ``N.damaged`` and every newer checkpoint as
      ``M.superseded``, so a rerun resumes from the newest older checkpoint (or the start)
      and replays the steps since, its evaluations and choices included.
  """
  error = None
  try:
    state = restore_in_place(manager, step, state, fields)
  except MemoryError:  # Not the checkpoint's fault: keep it.
    raise
  except Exception as e:  # orbax/tensorstore raise many types for damaged files.
    error = e
  # Listed before the processes agree: then process 0 moves folders, and another process
  # listing them meanwhile could fail and leave the others waiting at the next barrier.
  manager.reload()
  newer = sorted((s for s in manager.all_steps() if s > step), reverse=True)
  if not sharding.on_every_process(error is None):
    e = error or RuntimeError("another process could not restore it")
    if jax.process_index() == 0:
      for s in newer:
        _set_aside(manager, s, "superseded")
      _set_aside(manager, step)
    sharding.on_every_process(True)  # (Moved aside before any process looks again.)
    manager.reload()
    older = [s for s in manager.all_steps() if s < step]
    raise CheckpointLostError(
        f"checkpoint {os.path.join(str(manager.directory), str(step))}, the state this run "
        f"goes back to, could not be read ({type(e).__name__}: {str(e)[:300]}); it was moved "
        f"aside as {step}.damaged" + (f" and the newer checkpoints {newer[::-1]} as "
                                      ".superseded" if newer else "")
        + ": rerun the same command, which resumes from "
        + (f"checkpoint {max(older)}" if older else "the start")
        + f" and trains the steps to {step} and beyond again, with the same numbers") from e
  return state


def restore_in_place(manager: ocp.CheckpointManager, step: int, state: Any,
                     fields: tuple[str, ...] | None = None) -> Any:
  """The state saved at ``step``, read into ``state``'s own arrays a piece at a time.

  What a run does when it goes back to an earlier state (a plateau's decay, the best
  evaluation's parameters at the end): ``restore_latest`` would hold the state it reads
  twice over beside the one it replaces, this holds one 2 MB piece
  (``array_store.read_in_place``; ``experiments.bench.checkpoint_memory``). Where that is
  not possible (several processes or devices, a tree stored otherwise) the arrays are
  dropped and the state restored whole. A saved array of another shape or dtype than
  ``state``'s raises RuntimeError (and warns) naming both, before anything is read.

  Args:
    manager: the run's store (``make_manager``).
    step: a finished checkpoint of it.
    state: a ``TrainState`` (or any NamedTuple) of arrays, which are donated and must not
      be used afterwards, or of ``jax.ShapeDtypeStruct``s with the run's shardings.
    fields: read only these fields of ``state``; the others come back as they were.

  Returns:
    ``state`` with the saved values.
  """
  check_files(manager, step)
  rest = {f: getattr(state, f) for f in state._fields if fields and f not in fields}
  picked = state._replace(**{f: None for f in rest})
  target = abstract_like(picked)
  try:
    if jax.process_count() > 1:
      raise ValueError("several processes")
    read = read_in_place(os.path.join(str(manager.directory), str(step), "state"), picked)
  except LayoutMismatch as e:  # Orbax's whole restore could not read it either.
    raise RuntimeError(_unrestorable(manager, step, e, "")) from None
  except (ValueError, OSError) as e:  # Raised before anything is overwritten.
    logging.info("restoring checkpoint %d whole (%s)", step, e)
    state = picked = None
    ocp = _orbax()
    target = target._replace(**{f: jax.tree.map(lambda _: ocp.PLACEHOLDER, v)
                                for f, v in abstract_like(rest).items()})
    read = restore_latest(manager, target, only=step, in_place=False).state
  # The pieces' writes run asynchronously: wait for them, so that the pieces still in
  # flight are freed before freed memory is handed back (`checkpoint_memory` reports what
  # a restore leaves resident).
  jax.block_until_ready(read)
  host_memory.release()
  return read._replace(**rest)
