"""Test set-up: eight simulated CPU devices, set before jax is imported anywhere.

Compiled programs go to a persistent compilation cache in a temporary folder for the run
(``JAX_COMPILATION_CACHE_DIR``, every program however quick to compile; pytest-xdist's
workers and the subprocesses the tests start inherit it from the process that set it), so
a program that several tests compile is compiled once:
the suite's shapes repeat, and on a 2-core VM a third of its time went to compiling them
again (docs/testing.md). A folder the caller names is used instead and kept.
"""

import atexit
import os
import shutil
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench.speed import cache_env  # noqa: E402  (imports no jax)

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="mach_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.update(cache_env(_cache))
