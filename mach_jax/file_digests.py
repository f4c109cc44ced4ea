"""The size and digest of each file of a folder, recorded when it is written, checked before
it is read: model folders (``model.json``'s ``files``, SHA-256) and checkpoints (CRC-32).

A model folder is copied between machines and kept for months. orbax stores the arrays
uncompressed and without checksums, so a byte changed in a weights file loads as other
weights without an error, and a damaged metadata file fails with a message about shapes
(docs/reliability.md, "Damaged model folders"). ``bundle.export`` records every file but
``model.json`` in ``model.json``'s ``files``; ``bundle.load`` checks them before reading an
array and refuses a folder whose files differ, naming the file. Folders written before the
record existed (``files`` absent) load unchecked. A checkpoint saved synchronously keeps
its record in its own folder (``checkpoint.DIGESTS_FILE``); a damaged one is passed over
for the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib

from mach_jax import whole_file

__all__ = ["ALGORITHMS", "DamagedFolderError", "check", "check_record", "record", "validate",
           "write_record"]

_SKIPPED = ("model.json",)  # It holds the record, and is rewritten (set_calibration).
_BLOCK = 1 << 20


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_BLOCK), b""):
      h.update(block)
  return h.hexdigest()


def _crc32(path: str) -> str:
  c = 0
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_BLOCK), b""):
      c = zlib.crc32(block, c)
  return f"{c:08x}"


# name: (digest of a file, the digest's form). SHA-256 for model folders, which are kept
# and shared; CRC-32 (about twice as fast: experiments/bench/NOTES.md, "Files' records")
# for checkpoints, which are written every few minutes and only need damage caught.
ALGORITHMS = {"sha256": (_sha256, re.compile(r"[0-9a-f]{64}")),
              "crc32": (_crc32, re.compile(r"[0-9a-f]{8}"))}


class DamagedFolderError(ValueError):
  """A folder's file is missing, or differs from what was recorded when it was written."""


def record(path: str, skip: tuple[str, ...] = _SKIPPED, algorithm: str = "sha256"
           ) -> dict[str, dict]:
  """{relative path ('/'-separated): {"bytes": size, algorithm: hex digest}} of every file
  under the folder ``path`` but those in ``skip`` (its own record), in sorted order."""
  digest = ALGORITHMS[algorithm][0]
  out = {}
  for folder, subfolders, names in os.walk(path):
    subfolders.sort()
    for name in sorted(names):
      rel = os.path.relpath(os.path.join(folder, name), path).replace(os.sep, "/")
      if rel not in skip:
        full = os.path.join(folder, name)
        out[rel] = {"bytes": os.path.getsize(full), algorithm: digest(full)}
  return out


def _algorithm(entry) -> str | None:
  """The algorithm of a well-formed entry, else None."""
  if not isinstance(entry, dict) or len(entry) != 2 or type(entry.get("bytes")) is not int:
    return None
  name = next(k for k in entry if k != "bytes")
  ok = (name in ALGORITHMS and entry["bytes"] >= 0 and isinstance(entry[name], str)
        and ALGORITHMS[name][1].fullmatch(entry[name]))
  return name if ok else None


def validate(files, where: str) -> None:
  """Refuse a ``files`` record that ``record`` cannot have written (ValueError naming
  ``where``); None (a folder from before the record) passes."""
  if files is None:
    return
  if not isinstance(files, dict):
    raise ValueError(f"{where}: 'files' is a {type(files).__name__}, expected an object")
  for rel, entry in files.items():
    parts = rel.split("/")
    if (_algorithm(entry) is None or rel in _SKIPPED
        or any(p in ("", ".", "..") for p in parts)):
      raise ValueError(f"{where}: 'files' entry {rel!r}: {entry!r} is not a file's "
                       f"{{'bytes': size, one of {tuple(ALGORITHMS)}: hex digest}} under "
                       "the folder")


def check(path: str, files: dict | None, recorded_in: str = "model.json") -> None:
  """Refuse the folder ``path`` if a file of ``files`` (``record``'s output, validated, kept
  in the file ``recorded_in``) is missing or differs in size or digest: every size first,
  then the digests.

  Raises:
    DamagedFolderError: naming the file and saying what to do.
  """
  if files is None:
    return
  fix = "the folder was damaged or changed after it was written: copy or write it again"
  for rel, entry in files.items():
    full = os.path.join(path, *rel.split("/"))
    if not os.path.isfile(full):
      raise DamagedFolderError(f"{full}: missing ({recorded_in} lists it); {fix}")
    if (size := os.path.getsize(full)) != entry["bytes"]:
      raise DamagedFolderError(f"{full}: {size} bytes, where {recorded_in} records "
                               f"{entry['bytes']}; {fix}")
  for rel, entry in files.items():
    full = os.path.join(path, *rel.split("/"))
    name = _algorithm(entry)
    if ALGORITHMS[name][0](full) != entry[name]:
      raise DamagedFolderError(f"{full}: its {name} digest differs from the one "
                               f"{recorded_in} records; {fix}")


def write_record(folder: str, name: str, algorithm: str = "sha256",
                 skip: tuple[str, ...] = ()) -> None:
  """Write ``record(folder)`` as the JSON file ``folder/name`` (a checkpoint's own record),
  leaving out ``skip`` (files rewritten after it)."""
  files, path = record(folder, (name, *skip), algorithm), os.path.join(folder, name)
  with whole_file.replacing(path) as f:  # A cut record never shows.
    json.dump(files, f)


def check_record(folder: str, name: str) -> None:
  """``check`` the folder against the record ``write_record`` left in ``folder/name``; a
  folder without one passes (it was written without a record).

  Raises:
    DamagedFolderError: the record is unreadable, or a file differs (naming it).
  """
  path = os.path.join(folder, name)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      files = json.load(f)
    validate(files, path)
  except ValueError as e:  # (json's errors are ValueErrors.)
    raise DamagedFolderError(f"{path}: {e}") from None
  check(folder, files, name)
