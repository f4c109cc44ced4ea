"""The checkpoint store: one orbax ``CheckpointManager`` per work directory.

A checkpoint holds two items:

  * ``state``: the training state pytree (params, optimizer state, step), written by
    ``array_store.arrays_handler`` (orbax's PyTree handler, uncompressed) and restored onto
    a target tree of ``jax.ShapeDtypeStruct`` carrying the *current* mesh's shardings. That
    is what lets a run saved on 8 devices resume on 1 or on 4: without a target orbax
    either fails ("topology mismatch") or silently restores the optimizer state with
    another structure.
  * ``meta`` (JSON): the data position (epoch, batches done in that epoch, shuffle seed),
    the hash spec, the config, the library versions and the training time so far.

Saving is asynchronous on accelerators (orbax writes in the background while training goes
on) and synchronous on CPU, where a background save costs a second copy of the state
(``async_saves``); the manager keeps the last ``keep`` checkpoints plus the one of the
best validation evaluation (``KeepBest``). Orbax finalises a checkpoint by an atomic
rename, so a run killed mid-save leaves only a temporary folder that is never restored.
Each save records its files' sizes and CRC-32 in its folder (``DIGESTS_FILE``,
``file_digests``; a background save once every process has written its files, before the
rename), checked before it is read (``restore``): a finalised checkpoint whose files were
damaged later (or that orbax cannot read) is reported and the previous one is used.
Nothing is deleted except by the keep policy.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import jax

from mach_jax import config_checks, file_digests, host_memory
from mach_jax.array_store import (  # noqa: F401  (abstract_like: part of this API)
  abstract_like,
  arrays_handler,
  join_threads,
  joined_on_failure,
  orbax as _orbax,
  orbax_thread,
  save_args,
  write_failure,
)
from mach_jax.restore import (  # noqa: F401  (the read side of this store)
  DIGESTS_FILE,
  CheckpointLostError,
  Restored,
  check_files,
  restore_in_place,
  restore_kept,
  restore_latest,
)

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def async_saves(background: str = "auto") -> bool:
  """Whether checkpoints are written in the background (``config.checkpoint.background``):
  ``auto`` on accelerators, not on CPU; ``always``; ``never``.

  A background save must keep the state it writes while the next (donating) steps run, so
  on CPU, where device memory is the host's, it holds a second copy of the whole state
  until the write ends (measured: +1.0x the state's bytes; a synchronous save adds
  nothing). On an accelerator that copy lives in host memory, and training goes on.
  """
  if background not in config_checks.BACKGROUND:
    raise ValueError(f"config.checkpoint.background={background!r}: expected one of "
                     f"{config_checks.BACKGROUND}")
  return background == "always" or background == "auto" and jax.devices()[0].platform != "cpu"


@dataclasses.dataclass
class KeepBest:
  """An orbax preservation policy: keep the checkpoint of the run's best evaluation.

  The best is the step that the saved ``meta['best']`` names (``loop.Best``'s choice: the
  highest value, the earliest among equals), taken from every save's meta. A resumed
  run's first save carries the restored record, so the best checkpoint survives restarts;
  orbax's own ``BestN`` ranks metrics that this manager does not write to disk, and after
  a restart would let the best checkpoint be deleted.
  """

  step: int | None = None

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    return [c.step == self.step for c in checkpoints]


_KEEP_BEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Background managers.


@dataclasses.dataclass
class _Pending:
  """A background manager's save in flight: its step, whether its files get a record, and
  the error its write failed with, as soon as orbax's finalising thread sees it."""

  directory: str
  step: int | None = None
  record: bool = False
  error: BaseException | None = None
  threads: set = dataclasses.field(default_factory=set)  # Alive when the save began.

  def watch(self, manager: ocp.CheckpointManager) -> None:
    """Record the error of ``manager``'s background write in ``error`` as orbax's finalising
    thread meets it. That thread then waits at a barrier for the other processes, which wait
    for it at another until orbax's timeout (20 minutes); ``finish`` reads ``error`` instead
    of waiting for the thread. (orbax 0.12 has no public hook for a failed write.)"""
    checkpointer = getattr(manager, "_checkpointer", None)
    wait = getattr(checkpointer, "wait_until_finished", None)
    if wait is None:
      return

    def wait_recording_error():
      try:
        wait()
      except BaseException as e:
        self.error = e
        raise

    checkpointer.wait_until_finished = wait_recording_error

  def write_record(self) -> None:
    """orbax's ``post_finalization_callback``: on process 0, once every process has written
    its files, before the temporary folder is renamed (so no finished checkpoint lacks it)."""
    for name in os.listdir(self.directory) if self.record else ():
      if name.startswith(f"{self.step}.orbax-checkpoint-tmp"):
        _write_record(os.path.join(self.directory, name))


def make_manager(workdir: str, keep: int = 2, keep_best: bool = False,
                 background: str = "auto") -> ocp.CheckpointManager:
  """A manager over ``workdir/checkpoints`` keeping the last ``keep`` checkpoints and, with
  ``keep_best``, the one the saved metas name as the best (``KeepBest``); ``background``:
  ``async_saves``."""
  ocp = _orbax()
  policies = [ocp.checkpoint_managers.LatestN(keep)]
  if keep_best:
    policies.append(KeepBest())
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  pending = _Pending(directory) if async_saves(background) else None
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=pending is not None, create=True,
      async_options=pending and ocp.AsyncOptions(post_finalization_callback=pending.write_record))
  manager = ocp.CheckpointManager(directory, options=options,
                                  item_handlers={"state": arrays_handler(),
                                                 "meta": ocp.JsonCheckpointHandler()})
  if keep_best:
    _KEEP_BEST[manager] = policies[-1]
  if pending is not None:
    pending.watch(manager)
    _PENDING[manager] = pending
  return manager


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (a full disk, a lost mount); older ones are intact."""


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         record_files: bool = True) -> None:
  """Save ``state`` and ``meta`` at ``step`` (a background save returns while orbax
  writes), with its files' record (``DIGESTS_FILE``) when ``record_files``.

  With a ``keep_best`` manager, ``meta['best']`` (``resume.run_meta``'s) names the step to keep.

  Raises:
    CheckpointWriteError: the write failed (e.g. no space left on the device), or the
      background save before it did. The unfinished folder is removed; finished
      checkpoints are untouched, and rerunning the same command resumes from the newest.
  """
  ocp = _orbax()
  if manager in _KEEP_BEST and (meta.get("best") or {}).get("step") is not None:
    _KEEP_BEST[manager].step = meta["best"]["step"]
  finish(manager)  # (orbax's save would wait for a background save here anyway.)
  if (pending := _PENDING.get(manager)) is not None:
    pending.step, pending.record, pending.error = step, record_files, None
    pending.threads = set(threading.enumerate())
  try:
    with joined_on_failure():  # Then no write of it runs while its folder is removed.
      manager.save(step, args=ocp.args.Composite(state=save_args(state),
                                                 meta=ocp.args.JsonSave(meta)),
                   force=True)
    if pending is None and record_files and jax.process_index() == 0:
      _write_record(os.path.join(str(manager.directory), str(step)))
    host_memory.release()  # The chunks a synchronous save wrote from (and the record read).
  except Exception as e:  # orbax/tensorstore report a full disk as ValueError, OSError...
    raise _write_error(manager, step, e) from e


def finish(manager: ocp.CheckpointManager) -> None:
  """Wait for a background save to end (``manager.wait_until_finished``).

  Across processes a failed write is raised as soon as this process's finalising thread
  has met it, without waiting for that thread: it waits for the other processes, which
  wait for this one at another barrier until orbax's timeout. Raised, the error ends this
  process (``sharding.ending_at_once_on_error``), and so the others.

  Raises:
    CheckpointWriteError: the background save failed (as ``save``'s, naming its step).
  """
  pending = _PENDING.get(manager)
  try:
    while pending is not None and jax.process_count() > 1 and _saving(manager):
      if pending.error is not None:
        raise pending.error
      time.sleep(0.05)
    manager.wait_until_finished()
  except Exception as e:  # Raised in orbax's background thread, passed on here.
    if pending is not None and jax.process_count() == 1:  # (Across processes: at once.)
      join_threads(pending.threads, only=orbax_thread)  # Then its folder is removed.
    raise _write_error(manager, pending.step if pending else None, e) from e


def _saving(manager: ocp.CheckpointManager) -> bool:
  """Whether ``manager``'s finalising thread still runs."""
  thread = getattr(manager, "_finalize_thread", None)
  thread = thread.get() if hasattr(thread, "get") else None
  return thread is not None and thread.is_alive()


def _write_error(manager: ocp.CheckpointManager, step: int | None,
                 e: Exception) -> CheckpointWriteError:
  """The error of a failed save of ``step``, once its unfinished folder is removed."""
  directory = str(manager.directory)
  for name in os.listdir(directory) if os.path.isdir(directory) else ():
    if name.startswith(f"{step}.orbax-checkpoint-tmp"):
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  kept = sorted(s for s in manager.all_steps() if s != step)
  code, words = write_failure(e)
  return CheckpointWriteError(
      code, f"checkpoint {step} could not be written to {directory} ({words}); "
      + (f"the checkpoints of steps {kept} are intact: " if kept else "no earlier checkpoint "
         "exists: ")
      + "free space (or lower config.checkpoint.keep) and rerun the same command to resume")


def _write_record(folder: str) -> None:
  """A checkpoint's files' record; not of orbax's step metadata, which orbax rewrites when it
  renames the folder (its damage is no silent change of an array: orbax fails on it)."""
  file_digests.write_record(folder, DIGESTS_FILE, "crc32", skip=("_CHECKPOINT_METADATA",))
