"""Handing freed host memory back to the operating system.

glibc's ``malloc`` keeps what a program frees for its own reuse, and returns to the system
only the free memory at the top of its heaps. Memory freed between live blocks (an
evaluation's score blocks, a checkpoint's chunks, the featurizer's matrices of one chunk of
a query log, read in the prefetch thread's arena) stays resident though nothing uses it: a
text-config run on text WordNet held 1,726 MB while training after its first evaluation,
1,557 MB with ``release`` after each evaluation (experiments/bench/NOTES.md). The training
loop calls ``release`` where such memory has just been freed, and every few steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
  """glibc's ``malloc_trim``, or None (another C library, or no C library to load)."""
  try:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
  except (OSError, AttributeError):
    return None


def release() -> bool:
  """Return the free pages of every malloc arena to the system (``malloc_trim(0)``: 10–30 ms
  for a 1 GB process on a 2-core VM). Returns whether anything was released; a no-op
  returning False where the C library is not glibc."""
  trim = _malloc_trim()
  return bool(trim(0)) if trim is not None else False
