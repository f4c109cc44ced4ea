"""The kill campaign of the folder-copying tools compares what it should."""

from __future__ import annotations

import os
import shutil

from experiments.bench import copy_kills
from mach_jax import bundle
from tests.helpers import ROOT

V1_XC = os.path.join(ROOT, "tests", "data", "model_v1", "xc")


def test_a_folder_equals_its_copy_and_not_its_quantized_or_widened_copy(tmp_path):
  reference = copy_kills.snapshot(V1_XC)
  shutil.copytree(V1_XC, tmp_path / "copy")
  assert copy_kills.equal(str(tmp_path / "copy"), reference)
  bundle.quantize(V1_XC, str(tmp_path / "int8"))
  assert not copy_kills.equal(str(tmp_path / "int8"), reference)
  bundle.widen(V1_XC, str(tmp_path / "wide"), 61)  # The same arrays, another model.json.
  assert not copy_kills.equal(str(tmp_path / "wide"), reference)


def test_a_killed_command_is_reported_as_killed(tmp_path):
  out = str(tmp_path / "q")
  killed = copy_kills.run(copy_kills.command("quantize", V1_XC, out, 0), out, kill_at=0.0)
  assert killed["returncode"] == -9 and not os.path.exists(out)
