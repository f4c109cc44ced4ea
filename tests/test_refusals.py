"""The command-line tools refuse bad input with the message alone: no traceback, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments.bench.fuzz_cli import run_cases
from experiments.refusals import refusing, writable_output, writing
from mach_jax.data.xc import XCFormatError
from tests.helpers import ROOT

V1_XC = os.path.join(ROOT, "tests", "data", "model_v1", "xc")  # R=2, B=8, K=60, D=100.


def test_refusing_prints_a_refusal_and_passes_a_failure_through():
  with pytest.raises(SystemExit, match=r"^error: --input: a.txt:3: bad$"):
    with refusing("--input", OSError):
      raise XCFormatError("a.txt:3: bad")  # A refusal wherever it is raised.
  with pytest.raises(SystemExit, match=r"^error: config.model.B=-4: expected$"):
    with refusing("--input"):
      raise ValueError("config.model.B=-4: expected")  # A setting: named by the message.
  with pytest.raises(SystemExit, match=r"^error: --k=0 is out of range$"):
    with refusing("--k", ValueError):
      raise ValueError("--k=0 is out of range")  # Not named twice.
  with pytest.raises(RuntimeError):  # A failure inside the library keeps its traceback.
    with refusing("--input", OSError, ValueError):
      raise RuntimeError("a bug")
  with pytest.raises(SystemExit, match=r"^error: k=0: expected k >= 1$"):
    with refusing(naming=("k", "m")):
      raise ValueError("k=0: expected k >= 1")  # Names an argument of the call.
  with pytest.raises(ValueError, match="^incompatible shapes"):
    with refusing(naming=("k", "m")):
      raise ValueError("incompatible shapes (3,) and (4,)")  # Names none: a failure.


def test_an_output_in_a_missing_folder_is_refused_before_any_work(tmp_path):
  assert writable_output("--output", str(tmp_path / "p.txt")) == str(tmp_path / "p.txt")
  with pytest.raises(SystemExit, match=r"--output: .*the folder .*none does not exist"):
    writable_output("--output", str(tmp_path / "none" / "p.txt"))
  with pytest.raises(SystemExit, match="is a folder"):
    writable_output("--output", str(tmp_path))


def test_an_output_is_written_whole_at_its_target_and_a_pipe_as_it_is(tmp_path):
  """``--output /dev/stdout`` (a pipe) is written to, not replaced by a file; a symbolic
  link's target is written whole, the link kept."""
  import threading
  (tmp_path / "target.txt").write_text("old\n")
  os.symlink(tmp_path / "target.txt", tmp_path / "link.txt")
  with writing("--output", str(tmp_path / "link.txt")) as f:
    f.write("new\n")
  assert os.path.islink(tmp_path / "link.txt") and (tmp_path / "target.txt").read_text() == "new\n"
  os.mkfifo(tmp_path / "pipe")
  read = []
  reader = threading.Thread(target=lambda: read.append(open(tmp_path / "pipe").read()))
  reader.start()
  with writing("--output", str(tmp_path / "pipe")) as f:
    f.write("1:0.5\n")
  reader.join(timeout=10)
  assert read == ["1:0.5\n"] and sorted(os.listdir(tmp_path)) == ["link.txt", "pipe",
                                                                    "target.txt"]
  with pytest.raises(SystemExit, match=r"^error: --output: .*none/p.txt: not written"):
    with writing("--output", str(tmp_path / "none" / "p.txt")) as f:
      f.write("x")


def _refused(case: tuple, message: str) -> None:
  code, printed = case
  assert code == 1 and printed.startswith(message), case


def test_predict_refuses_a_bad_model_input_flag_or_output(tmp_path):
  good = tmp_path / "good.txt"
  good.write_text("2 100 60\n1,2 3:0.5 7:1\n4 9:1\n")
  bad = tmp_path / "bad.txt"
  bad.write_text("2 100 60\n1,2 3:0.5 7:1\nbad line\n")
  wide = tmp_path / "wide.txt"
  wide.write_text("1 500 60\n1 450:1\n")
  out = tmp_path / "p.txt"
  io = ["--input", str(good), "--output", str(out)]
  cases = run_cases("experiments.predict", [
      ["--model", str(tmp_path / "none"), *io],
      ["--model", V1_XC, "--input", str(bad), "--output", str(out)],
      ["--model", V1_XC, "--input", str(wide), "--output", str(out)],
      ["--model", V1_XC, *io, "--k", "0"],
      ["--model", V1_XC, "--input", str(good), "--output", str(tmp_path / "none" / "p.txt")],
      ["--model", V1_XC, *io, "--k", "3"]])
  _refused(cases[0], f"error: --model: {tmp_path / 'none' / 'model.json'}: not a model folder")
  _refused(cases[1], f"error: --input: {bad}:3: bad label field 'bad'")
  _refused(cases[2], f"error: --input: {wide}: header has D=500 features, the model has D=100")
  _refused(cases[3], "error: k=0: this model's exact decoding answers")
  _refused(cases[4], "error: --output: ")
  assert cases[5] == (0, ""), cases[5]
  assert len(out.read_text().splitlines()) == 2 and not os.path.exists(f"{out}.partial")


def test_quantize_refuses_with_the_message_alone(tmp_path):
  _refused(run_cases("experiments.quantize", [["--model", V1_XC, "--out", str(tmp_path)]])[0],
           f"error: {tmp_path}: exists; pass a new folder")


def test_a_refusal_is_printed_alone_by_the_process(tmp_path):
  """The whole path once, in a process of its own: stderr's last line, exit status 1."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, "-m", "experiments.tune", "--config",
                        "experiments/configs/bibtex.py", "--workdir", str(tmp_path / "t"),
                        "--config.data.validation_fraction=0.1", "--learning_rates=1e-3,abc"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
  assert run.stderr.strip().splitlines()[-1] == ("error: --learning_rates: 'abc' is not a "
                                                 "positive number")


@pytest.mark.parametrize("tool", ["predict", "search"])
def test_the_command_line_fuzz_finds_every_case_answered_exactly_or_refused_alone(tool,
                                                                                   tmp_path):
  from experiments.bench import fuzz_cli
  row = fuzz_cli.fuzz(tool, 10, seed=3, folder=str(tmp_path))
  assert row["failures"] == [] and row["answered"] > 0 and row["refused"] > 0, row


def test_the_fuzz_oracle_tells_a_crash_a_wrong_refusal_and_other_lines(tmp_path):
  from experiments.bench import fuzz_cli
  out = tmp_path / "o.txt"
  out.write_text("1:0.5\n")
  case = {"output": str(out)}
  assert fuzz_cli.judge(case, (0, ""), ["1:0.5"]) == "answered"
  assert fuzz_cli.judge(case, (1, "error: --k: k=0 ..."), None) == "refused"
  with pytest.raises(fuzz_cli.SilentChange, match="other lines"):
    fuzz_cli.judge(case, (0, ""), ["2:0.5"])
  with pytest.raises(fuzz_cli.SilentChange, match="the tool refused"):
    fuzz_cli.judge(case, (1, "error: no"), ["1:0.5"])
  with pytest.raises(fuzz_cli.SilentChange, match="expected a refusal alone"):
    fuzz_cli.judge(case, (1, "k=0 without its error: prefix"), None)
  with pytest.raises(fuzz_cli.SilentChange, match="no file"):
    fuzz_cli.judge({"output": str(tmp_path / "none.txt")}, (0, ""), ["1:0.5"])
  with pytest.raises(fuzz_cli.UnexplainedCrash):
    fuzz_cli.judge(case, ("traceback", "Traceback ..."), None)
