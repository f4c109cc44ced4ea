"""host_memory.release: memory freed between live blocks goes back to the system; the
memory bench's split of the resident set."""

import os

import pytest

from experiments.bench import memory
from mach_jax import host_memory


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def test_release_returns_memory_freed_between_live_blocks():
  if host_memory._malloc_trim() is None:  # noqa: SLF001
    pytest.skip("not glibc")
  blocks = [bytearray(100_000) for _ in range(2000)]  # 200 MB in malloc's heap (< 128 KiB).
  for b in blocks:
    b[::4096] = b"\1" * len(b[::4096])  # Touch every page.
  del blocks[::2]  # 100 MB freed between the blocks kept: malloc keeps it.
  held = _rss_mb()
  host_memory.release()
  assert _rss_mb() < held - 50
  assert len(blocks) == 1000


def test_the_memory_bench_splits_the_resident_set_into_anonymous_and_file_parts():
  rss, anon, file, hwm = memory.rss_mb(os.getpid())
  block = bytearray(64 << 20)
  block[::4096] = b"\1" * len(block[::4096])  # 64 MB of anonymous pages, touched.
  rss2, anon2, file2, hwm2 = memory.rss_mb(os.getpid())
  assert anon2 - anon > 60 and abs(file2 - file) < 8
  assert abs(rss2 - (anon2 + file2)) < 2  # No shared memory here: the two parts are all.
  del block
  rss3, _, _, hwm3 = memory.rss_mb(os.getpid())
  # The high-water mark keeps the block's pages after they are gone.
  assert rss3 < rss2 - 60 and hwm3 >= hwm2 >= rss2
  assert memory.rss_mb(2**22 + 1) == (0.0,) * 4  # No such process.
