"""What a result was produced with: library versions and the process's peak memory."""

from __future__ import annotations

import platform


def library_versions() -> dict[str, str]:
  """Versions of Python and the libraries whose changes can move a result."""
  import importlib.metadata as md
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy"):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = "missing"
  return out


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:  # No procfs: not Linux.
    pass
  return platform.processor() or platform.machine()


def peak_rss_bytes() -> int:
  """This process's peak resident memory so far (0 where the OS does not say).

  On Linux the high-water mark of the running program's own memory (``VmHWM`` in
  /proc/self/status). Not ``ru_maxrss``: a process started by another inherits, through the
  fork before its exec, the parent's RSS as the floor of its ``ru_maxrss`` (a worker of a
  benchmark whose parent held 11 GB reported 11 GB, whatever it used itself).
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024  # kB.
  except OSError:  # No procfs: not Linux.
    pass
  try:
    import resource
  except ImportError:  # Not on POSIX.
    return 0
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(kib) * (1 if platform.system() == "Darwin" else 1024)  # macOS: bytes.
