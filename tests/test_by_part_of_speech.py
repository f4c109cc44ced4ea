"""experiments.bench.by_part_of_speech on a hand-made run: P@1 by part of speech and length."""

import subprocess
import sys

import numpy as np

from tests.helpers import ROOT


def test_the_table_splits_p_at_1_by_part_of_speech_and_counts_the_disagreements(tmp_path):
  data, run = tmp_path / "data", tmp_path / "run"
  data.mkdir()
  (data / "labels.tsv").write_text("0\tn001\tentity\n1\tv002\tmove\n2\tv003\trun\n")
  (data / "test.tsv").write_text("a dog\t0\nrun fast on foot now please\t1,2\nwalk\t1\n")
  for system, top1 in (("mach_text", [0, 0, 1]), ("pecos", [0, 2, 0])):
    (run / system).mkdir(parents=True)
    np.save(run / system / "preds.npy", np.array([[t, 0, 0, 0, 0] for t in top1]))
  out = subprocess.run([sys.executable, "-m", "experiments.bench.by_part_of_speech",
                        "--run", str(run), "--data", str(data)], cwd=ROOT, text=True,
                       capture_output=True, check=True).stdout
  assert "| all | 3 | 0.6667 | 0.6667 |" in out
  assert "| nouns | 1 | 1.0000 | 1.0000 |" in out
  assert "| verbs | 2 | 0.5000 | 0.5000 |" in out
  assert "| 5-9 words | 1 | 0.0000 | 1.0000 |" in out
  assert ("mach_text: 1 texts pecos gets right and it does not (1 verbs', 1 of them with a "
          "noun first), 1 the other way") in out
