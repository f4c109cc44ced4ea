"""Test set-up: eight simulated CPU devices, set before jax is imported anywhere."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                            "data"))


def shared_file(name: str, split: str) -> str:
  path = os.path.join(SHARED_DATA, name, f"{split}.txt.gz")
  if not os.path.exists(path):
    pytest.skip(f"{path} not found (../shared/data is absent)")
  return path
