"""One run per work directory: a lock taken at start-up, and a writability check before it.

``claim(workdir)`` creates the directory, refuses one that cannot be written (read-only
file system, no permission, a full disk) before any data is read or any step is compiled,
and takes an exclusive ``flock`` on ``workdir/run.lock``, whose text names the holder (pid,
host, start time). A second process on the same directory is refused with that text. The
kernel releases a ``flock`` when its holder dies, however it dies, so a lock left by a
killed run is stale by construction: the next run takes it over and says so in its log.

In multi-process runs only process 0 takes the lock (the others share its directory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from typing import Iterator

from absl import logging

LOCK_FILE = "run.lock"


class WorkdirInUseError(RuntimeError):
  """Another live process holds the work directory's lock."""


class WorkdirNotWritableError(OSError):
  """The work directory cannot be created or written."""


def _not_writable(workdir: str, e: OSError) -> WorkdirNotWritableError:
  why = {errno.EROFS: "its file system is read-only", errno.EACCES: "permission denied",
         errno.EPERM: "permission denied", errno.ENOSPC: "the disk is full",
         errno.EDQUOT: "the disk quota is exhausted"}.get(e.errno, os.strerror(e.errno or 0))
  return WorkdirNotWritableError(
      e.errno, f"{workdir}: the work directory cannot be written ({why}: {e}); pass a "
      "--workdir on a writable disk with room for the checkpoints")


@contextlib.contextmanager
def claim(workdir: str, *, lock: bool = True) -> Iterator[str]:
  """Hold ``workdir`` for the duration of the ``with`` block.

  Args:
    workdir: the run's directory (created when missing).
    lock: take the exclusive lock (process 0 of a run); False checks writability only.

  Yields:
    The lock file's path.

  Raises:
    WorkdirNotWritableError: the directory cannot be created or a file in it written.
    WorkdirInUseError: another live process holds the lock; the message names it.
  """
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if lock else None
    if not lock:  # Writability alone: a probe file, removed at once.
      probe = os.path.join(workdir, f".probe-{socket.gethostname()}-{os.getpid()}")
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
  except OSError as e:
    raise _not_writable(workdir, e) from None
  if fd is None:
    yield path
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
      raise WorkdirInUseError(
          f"{workdir} is in use by another run ({holder}); wait for it to end, stop it, or "
          "pass another --workdir") from None
    previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if previous:
      logging.info("%s: taking over the lock of a run that is no longer alive (%s)", path,
                   previous)
    text = (f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n").encode()
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, text, 0)
      os.fsync(fd)
    except OSError as e:
      raise _not_writable(workdir, e) from None
    try:
      yield path
    finally:  # The run ended, or raised: nothing to take over. (A killed one leaves it.)
      os.ftruncate(fd, 0)
  finally:
    os.close(fd)  # Releases the flock; after a crash the file still names the holder.
