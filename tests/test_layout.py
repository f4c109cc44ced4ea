"""The library's shape: the import graph, file sizes, the public API and the README example."""

import os
import re
import subprocess
import sys

import mach_jax
from tests.helpers import ROOT

LIBRARY = os.path.join(ROOT, "mach_jax")


def _library_files():
  for d, _, files in os.walk(LIBRARY):
    for f in files:
      if f.endswith(".py"):
        yield os.path.join(d, f)


def test_serving_never_loads_the_training_loop():
  code = ("import sys, mach_jax.predictor, mach_jax.search, mach_jax.inference; "
          "print(sorted(m for m in sys.modules if m.startswith('mach_jax')))")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True).stdout
  assert "'mach_jax.predictor'" in out and "'mach_jax.train'" not in out, out
  assert "'mach_jax.checkpoint'" not in out and "'mach_jax.loop'" not in out, out


def test_no_library_module_imports_the_training_loop():
  pattern = re.compile(r"^\s*(from mach_jax import .*\btrain\b|from mach_jax\.train import|"
                       r"import mach_jax\.train)", re.M)
  offenders = [f for f in _library_files()
               if not f.endswith(os.path.join("mach_jax", "train.py"))
               and pattern.search(open(f).read())]
  assert not offenders, offenders


def test_library_files_stay_small():
  sizes = {os.path.relpath(f, ROOT): sum(1 for _ in open(f)) for f in _library_files()}
  assert max(sizes.values()) <= 360, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
  assert sizes[os.path.join("mach_jax", "train.py")] <= 250


def test_public_api_resolves_every_name():
  for name in mach_jax.__all__:
    assert getattr(mach_jax, name) is not None, name
  assert mach_jax.default_config().model.R > 0


def test_readme_python_example_runs(tmp_path):
  readme = open(os.path.join(ROOT, "README.md")).read()
  block = re.search(r"## Python\n.*?```python\n(.*?)```", readme, re.S).group(1)
  assert len(block.strip().splitlines()) <= 14
  namespace = {}
  exec(block.replace("/tmp/mach_demo", str(tmp_path / "demo")), namespace)
  scores, ids = namespace["scores"], namespace["ids"]
  assert ids.shape == scores.shape == (200, 5)
  assert namespace["results"]["P@1"] > 0.2
