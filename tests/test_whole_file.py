"""Small files rewritten in place are written whole or not at all (mach_jax.whole_file)."""

import errno
import json
import os

import pytest

from mach_jax import bundle, loop, whole_file


def _fail_fsync(monkeypatch):
  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(whole_file.os, "fsync", full)


@pytest.mark.parametrize("unique", [False, True])
def test_a_file_is_replaced_whole(tmp_path, unique):
  path = tmp_path / "a.json"
  path.write_text("old")
  with whole_file.replacing(str(path), unique=unique) as f:
    f.write("new")
  assert path.read_text() == "new"
  assert os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("unique", [False, True])
def test_a_full_disk_keeps_the_earlier_file_and_names_it(tmp_path, monkeypatch, unique):
  """Before: the temporary file stayed beside it, and the error named no file."""
  path = tmp_path / "a.json"
  path.write_text("old")
  _fail_fsync(monkeypatch)
  with pytest.raises(OSError, match=r"a.json: not written \(No space left on device\); "
                     r"the earlier file, if any, is kept") as e:
    with whole_file.replacing(str(path), unique=unique) as f:
      f.write("new")
  assert e.value.errno == errno.ENOSPC
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["a.json"]


def test_an_error_in_the_block_leaves_the_earlier_file(tmp_path):
  path = tmp_path / "a.json"
  path.write_text("old")
  with pytest.raises(TypeError):
    with whole_file.replacing(str(path)) as f:
      json.dump({"x": object()}, f)  # Half written when it fails.
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["a.json"]


def test_results_and_a_calibration_on_a_full_disk(tmp_path, monkeypatch):
  """results.json and a model folder's model.json (set_calibration, which wrote no
  fsync and left model.json.tmp behind on a failure)."""
  loop.write_results(str(tmp_path), {"P@1": 0.5})
  folder = tmp_path / "model"
  folder.mkdir()
  (folder / "model.json").write_text('{"calibration": null}')
  _fail_fsync(monkeypatch)
  with pytest.raises(OSError, match="results.json: not written"):
    loop.write_results(str(tmp_path), {"P@1": 0.7})
  with pytest.raises(OSError, match="model.json: not written"):
    bundle.set_calibration(str(folder), {"method": "platt"})
  assert json.loads((tmp_path / "results.json").read_text()) == {"P@1": 0.5}
  assert json.loads((folder / "model.json").read_text()) == {"calibration": None}
  assert sorted(os.listdir(tmp_path)) == ["model", "results.json"]
  assert os.listdir(folder) == ["model.json"]
