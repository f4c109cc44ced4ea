"""The peers' worker (experiments/bench/peer_worker.py) prepares data the peers can load.

The worker runs in the peers' venv; the function tested here needs only the standard
library, so it is imported from the main one.
"""

import gzip

from experiments.bench import peer_worker


def test_omikuji_copy_leaves_out_points_without_features_and_counts_them(tmp_path):
  # omikuji refuses a whole file holding a point with no features ("36121 " in the Debian
  # set); a point with features but no labels stays.
  src = tmp_path / "train.txt.gz"
  with gzip.open(src, "wt") as f:
    f.write("4 10 3\n0 1:0.5 2:0.5\n2 \n 3:1.0\n1,2 4:0.25\n")
  path, left_out = peer_worker.omikuji_copy(str(src), str(tmp_path))
  assert left_out == 1
  assert open(path).read() == "3 10 3\n0 1:0.5 2:0.5\n 3:1.0\n1,2 4:0.25\n"
