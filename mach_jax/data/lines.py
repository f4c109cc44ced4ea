"""UTF-8 text files as lines, for every reader: one convention, errors naming file and line.

A line ends at "\\n" (one "\\r" just before it is dropped), the last may lack it, and a
byte-order mark at the start is skipped. ``read_text_lines`` reads a whole file, plain or
gzip (the XC reader); ``iter_text_lines`` streams one (query logs, catalogues, query files).
"""

from __future__ import annotations

import gzip
import zlib
from typing import Iterator


def _undecodable(path: str, line: int, raw: bytes, start: int, error: type[Exception]):
  return error(f"{path}:{line}: not valid UTF-8 (byte {raw[start:start + 1]!r})")


def read_text_lines(path: str, error: type[Exception]) -> list[str]:
  """The lines of ``path`` (plain or gzip), without their line ends.

  Raises:
    ``error``: naming ``path`` (and the line) for a damaged gzip stream or invalid UTF-8.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise error(f"{path}: damaged gzip stream ({e}); the file is truncated or corrupt") \
          from None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise _undecodable(path, raw.count(b"\n", 0, e.start) + 1, raw, e.start, error) from None
  lines = text.removeprefix("\ufeff").split("\n")
  if lines[-1] == "":
    lines.pop()
  return [l[:-1] if l.endswith("\r") else l for l in lines]


def iter_text_lines(path: str, error: type[Exception]) -> Iterator[tuple[int, str]]:
  """(1-based line number, line without its end) of plain-text ``path``, streamed.

  Raises:
    ``error``: naming ``path`` and the line, for invalid UTF-8.
  """
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise _undecodable(path, lineno, raw, e.start, error) from None
      line = line.removesuffix("\n").removesuffix("\r")
      yield lineno, line.removeprefix("\ufeff") if lineno == 1 else line
