"""How the command-line tools end when they refuse: the message alone, exit status 1.

A refusal's message is the whole story: it names the file and line, the folder, the flag or
the setting, and what to change. The tools print it on stderr as ``error: ...`` with no
traceback above it. Any other error is a failure inside the library and keeps its traceback.

    with refusing("--input", OSError, ValueError):
      data = read_xc(path)          # error: --input: test.txt:3: bad label field 'x' ...
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator

from mach_jax import checkpoint, file_digests, whole_file, workdir
from mach_jax.data.query_log import QueryLogError
from mach_jax.data.xc import XCFormatError

__all__ = ["REFUSALS", "refusing", "writable_output", "writing"]

# Refused wherever they are raised: each names its file and line, or its folder.
REFUSALS = (XCFormatError, QueryLogError, file_digests.DamagedFolderError,
            checkpoint.CheckpointWriteError, workdir.WorkdirInUseError,
            workdir.WorkdirNotWritableError)


@contextlib.contextmanager
def refusing(flag: str | None = None, *kinds: type[Exception],
             naming: tuple[str, ...] = ()) -> Iterator[None]:
  """Ends the program with ``error: FLAG: message`` on a refusal raised inside the block.

  Args:
    flag: the command-line flag the block reads (``--input``), put before a message that
      names neither it nor a setting; None: the message alone.
    *kinds: exception classes that are refusals in this block (what reading a file the
      user named raises, say), beyond ``REFUSALS`` and any error whose message begins
      with a setting (``config.<field>=...``), which are refusals everywhere.
    naming: arguments of the call in the block: a ValueError whose message begins with
      one of them (``k=0: ...``) is a refusal of that argument; any other ValueError
      there keeps its traceback.

  Raises:
    SystemExit: with the message (exit status 1; Python prints it on stderr).
  """
  try:
    yield
  except Exception as e:
    named = isinstance(e, ValueError) and str(e).startswith(tuple(f"{n}=" for n in naming))
    if not (named or isinstance(e, kinds + REFUSALS) or str(e).startswith("config.")):
      raise
    where = f"{flag}: " if flag and not str(e).startswith((flag, "config.")) else ""
    raise SystemExit(f"error: {where}{e}") from None


@contextlib.contextmanager
def writing(flag: str, path: str) -> Iterator[IO]:
  """The output file ``path``, open for text: a regular file (or a new one) is written whole
  or not at all (``whole_file``; through a symbolic link, at its target), anything else (a
  pipe, ``/dev/stdout``) is written to as it is. A failure ends the program naming ``flag``."""
  as_it_is = os.path.exists(path) and not os.path.isfile(path)  # (Both follow links.)
  with refusing(flag, OSError), (open(path, "w") if as_it_is
                                 else whole_file.replacing(os.path.realpath(path))) as f:
    yield f


def writable_output(flag: str, path: str) -> str:
  """``path``, once its folder exists: a missing one is refused before any work is done."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise SystemExit(f"error: {flag}: {path}: the folder {folder} does not exist")
  if os.path.isdir(path):
    raise SystemExit(f"error: {flag}: {path} is a folder; pass a file name")
  return path
