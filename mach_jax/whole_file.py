"""Files written whole or not at all.

``replacing(path)`` hands out a temporary file beside ``path``; when the block ends, the
file is flushed to disk and renamed over ``path``. A process killed, or a write that fails
(a full disk), leaves the previous file, or none: never half of one, and no temporary file
after a failure. Every small file the library rewrites in place (``results.json``, a model
folder's ``model.json``, a checkpoint's record, a rewound log, the parsed-data cache) goes
through it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def replacing(path: str, mode: str = "w", *, unique: bool = False) -> Iterator[IO]:
  """Write ``path`` whole or not at all.

  Args:
    path: the file to write (its folder must exist).
    mode: ``"w"`` or ``"wb"``.
    unique: a temporary file of its own (``tempfile.mkstemp``) instead of
      ``path + ".partial"``, for files that concurrent processes may write at once.

  Yields:
    The temporary file, open in ``mode``.

  Raises:
    OSError: the file could not be written; the message names ``path``, and the errno is
      the failure's (``errno.ENOSPC`` for a full disk).
  """
  if unique:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                               prefix=os.path.basename(path) + ".", suffix=".partial")
    opened = os.fdopen(fd, mode)
  else:
    tmp, opened = path + ".partial", None
  try:
    with opened or open(tmp, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())  # On disk before the rename: after a crash, the old or the new.
    os.replace(tmp, path)
  except OSError as e:
    raise OSError(e.errno, f"{path}: not written ({e.strerror or e}); the earlier file, if "
                  "any, is kept") from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
