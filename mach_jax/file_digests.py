"""The size and SHA-256 of each file of a model folder, recorded at export, checked at load.

A model folder is copied between machines and kept for months. orbax stores the arrays
uncompressed and without checksums, so a byte changed in a weights file loads as other
weights without an error, and a damaged metadata file fails with a message about shapes
(docs/reliability.md, "Damaged model folders"). ``bundle.export`` records every file but
``model.json`` in ``model.json``'s ``files``; ``bundle.load`` checks them before reading an
array and refuses a folder whose files differ, naming the file. Folders written before the
record existed (``files`` absent) load unchecked.
"""

from __future__ import annotations

import hashlib
import os
import re

__all__ = ["DamagedFolderError", "check", "record", "validate"]

_SKIPPED = ("model.json",)  # It holds the record, and is rewritten (set_calibration).
_HEX = re.compile(r"[0-9a-f]{64}")


class DamagedFolderError(ValueError):
  """A model folder's file is missing, or differs from what its export recorded."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def record(path: str) -> dict[str, dict]:
  """{relative path ('/'-separated): {"bytes": size, "sha256": hex digest}} of every file
  under the folder ``path`` but ``model.json``, in sorted order."""
  out = {}
  for folder, subfolders, names in os.walk(path):
    subfolders.sort()
    for name in sorted(names):
      rel = os.path.relpath(os.path.join(folder, name), path).replace(os.sep, "/")
      if rel not in _SKIPPED:
        full = os.path.join(folder, name)
        out[rel] = {"bytes": os.path.getsize(full), "sha256": _sha256(full)}
  return out


def validate(files, where: str) -> None:
  """Refuse a ``files`` record that ``record`` cannot have written (ValueError naming
  ``where``); None (a folder from before the record) passes."""
  if files is None:
    return
  if not isinstance(files, dict):
    raise ValueError(f"{where}: 'files' is a {type(files).__name__}, expected an object")
  for rel, entry in files.items():
    parts = rel.split("/")
    if (not isinstance(entry, dict) or set(entry) != {"bytes", "sha256"}
        or type(entry["bytes"]) is not int or entry["bytes"] < 0
        or not isinstance(entry["sha256"], str) or not _HEX.fullmatch(entry["sha256"])
        or rel in _SKIPPED or any(p in ("", ".", "..") for p in parts)):
      raise ValueError(f"{where}: 'files' entry {rel!r}: {entry!r} is not a file's "
                       "{'bytes': size, 'sha256': hex digest} under the folder")


def check(path: str, files: dict | None) -> None:
  """Refuse the folder ``path`` if a file of ``files`` (``record``'s output, validated) is
  missing or differs in size or digest: every size first, then the digests.

  Raises:
    DamagedFolderError: naming the file and saying what to do.
  """
  if files is None:
    return
  fix = "the folder was damaged or changed after export: copy or export it again"
  for rel, entry in files.items():
    full = os.path.join(path, *rel.split("/"))
    if not os.path.isfile(full):
      raise DamagedFolderError(f"{full}: missing (model.json lists it); {fix}")
    if (size := os.path.getsize(full)) != entry["bytes"]:
      raise DamagedFolderError(f"{full}: {size} bytes, where model.json records "
                               f"{entry['bytes']}; {fix}")
  for rel, entry in files.items():
    full = os.path.join(path, *rel.split("/"))
    if _sha256(full) != entry["sha256"]:
      raise DamagedFolderError(f"{full}: its SHA-256 differs from the one model.json "
                               f"records; {fix}")
