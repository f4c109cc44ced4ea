"""mach_jax.provenance: a worker's peak RSS is its own, not its parent's at the fork."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = ("import resource; from mach_jax import provenance; "
         "from experiments.bench.peer_worker import peak_rss_mb; "
         "print(provenance.peak_rss_bytes() / 2**20, peak_rss_mb(), "
         "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only (VmHWM)")
def test_a_child_of_a_large_parent_reports_its_own_peak():
  held = np.ones(1 << 27)  # 1 GiB, touched: resident in this process when the child forks.
  out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True,
                       text=True, check=True)
  ours, workers, ru_maxrss = map(float, out.stdout.split())
  assert held.sum() == 1 << 27
  assert ru_maxrss > 1000  # The failure mode: the parent's 1 GiB is the floor of ru_maxrss.
  assert 0 < ours < 500 and 0 < workers < 500  # What the child itself held (MB).


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="Linux only (/proc/cpuinfo)")
def test_cpu_model_is_the_model_name_line():
  from mach_jax import provenance
  names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
           if line.startswith("model name")]
  assert provenance.cpu_model() == names[0] if names else provenance.cpu_model()
