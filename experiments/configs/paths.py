"""Where experiment configs find their data: the shared sets beside the repository, and the
sets the repository builds itself under runs/data."""

import os

_REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def shared_data(name: str, split: str) -> str:
  """Path of ../shared/data/<name>/<split>.txt.gz next to the repository."""
  return os.path.normpath(os.path.join(_REPO, "..", "shared", "data", name, f"{split}.txt.gz"))


def built_root(name: str) -> str:
  """runs/data/<name> in the repository: a set the repository builds itself
  (``python -m experiments.datasets.<name> --out runs/data/<name>``)."""
  return os.path.normpath(os.path.join(_REPO, "runs", "data", name))


def built_data(name: str, split: str) -> str:
  """Path of runs/data/<name>/<split>.txt.gz."""
  return os.path.join(built_root(name), f"{split}.txt.gz")
