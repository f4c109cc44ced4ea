"""Cross-check mach_jax.metrics against napkinXC's metrics on random predictions.

napkinXC lives in the peers' venv (``python -m experiments.bench.peers --setup_only``
creates .venv-peers); the test skips when that venv is absent. Set MACH_PEERS_VENV to use
another one.
"""

import json
import os
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("MACH_PEERS_VENV", os.path.join(ROOT, ".venv-peers"))

SCRIPT = """
import json, sys
import numpy as np, scipy.sparse as sp
import napkinxc.metrics as m
d = np.load(sys.argv[1])
Y = sp.csr_matrix((d["data"], d["indices"], d["indptr"]), shape=tuple(d["shape"]))
P = d["pred"].tolist()
inv = m.Jain_et_al_inverse_propensity(Y, A=0.55, B=1.5)
out = {"P": m.precision_at_k(Y, P, k=5).tolist(), "nDCG": m.ndcg_at_k(Y, P, k=5).tolist(),
       "PSP": m.psprecision_at_k(Y, P, inv, k=5).tolist(),
       "R": m.recall_at_k(Y, P, k=5).tolist(), "inv": np.asarray(inv).tolist()}
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists(os.path.join(VENV, "bin", "python")),
                    reason=f"{VENV} not found (python -m experiments.bench.peers --setup_only)")
def test_metrics_agree_with_napkinxc(tmp_path):
  rng = np.random.default_rng(0)
  n, L = 300, 40
  dense = (rng.random((n, L)) < 0.08).astype(np.float32)
  dense[np.arange(n), rng.integers(0, L, n)] = 1  # Every point has a label (napkinXC's recall).
  Y = sp.csr_matrix(dense)
  # Predictions biased towards the truth so that every metric is far from 0.
  scores = rng.random((n, L)) + 0.7 * Y.toarray()
  pred = np.argsort(-scores, axis=1)[:, :5]
  path = tmp_path / "case.npz"
  np.savez(path, data=Y.data, indices=Y.indices, indptr=Y.indptr, shape=Y.shape, pred=pred)
  out = subprocess.run([os.path.join(VENV, "bin", "python"), "-c", SCRIPT, str(path)],
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  theirs = json.loads(out.stdout)
  inv = 1.0 / metrics.propensities(Y, 0.55, 1.5)
  np.testing.assert_allclose(inv, theirs["inv"], rtol=1e-6)
  ours = metrics.evaluate(pred, Y, inv, ks=(1, 2, 3, 4, 5))
  for k in range(1, 6):  # abs=1e-6: napkinXC computes in float32 in places.
    assert ours[f"P@{k}"] == pytest.approx(theirs["P"][k - 1], abs=1e-6)
    assert ours[f"nDCG@{k}"] == pytest.approx(theirs["nDCG"][k - 1], abs=1e-6)
    assert ours[f"PSP@{k}"] == pytest.approx(theirs["PSP"][k - 1], abs=1e-6)
    assert ours[f"R@{k}"] == pytest.approx(theirs["R"][k - 1], abs=1e-6)
