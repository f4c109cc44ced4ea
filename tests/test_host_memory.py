"""host_memory.release: memory freed between live blocks goes back to the system."""

import pytest

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
