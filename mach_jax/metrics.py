"""Ranking metrics of the Extreme Classification Repository, on the host with NumPy.

Conventions (as pyxclib / the XC repository):
  * P@k = |top-k ∩ y| / k. It divides by k, not min(|y|, k): the official MACH code's
    min(|y|, k) inflates results on points with few labels.
  * nDCG@k = DCG@k / IDCG@k with DCG@k = sum_{i<=k} rel_i / log2(i + 1) and the ideal DCG
    of min(k, |y|) relevant labels at the top.
  * PSP@k and PSnDCG@k weight each hit by the inverse propensity 1/p_l (Jain et al., 2016)
    and are normalised by the best value achievable with the point's true labels.
  * R@k = |top-k ∩ y| / |y|.
Points without labels stay in the denominator of every mean and score 0.

Reference: Jain, Prabhu, Varma. "Extreme Multi-label Loss Functions for Recommendation,
Tagging, Ranking & Other Missing Label Applications", KDD 2016.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def propensities(Y: sp.csr_matrix, A: float = 0.55, B: float = 1.5) -> np.ndarray:
  """p_l = 1 / (1 + C * exp(-A * log(N_l + B))), C = (log N - 1) * (B + 1)^A.

  Args:
    Y: [N, L] training label matrix.
    A, B: the data-set constants (0.55 / 1.5 is the usual default; Jain et al. use 0.6 / 2.6
      for Amazon and 0.5 / 0.4 for Wikipedia).
  """
  freqs = np.asarray((Y > 0).sum(axis=0)).ravel()
  return propensities_from_counts(freqs, Y.shape[0], A, B)


def propensities_from_counts(freqs: np.ndarray, N: int, A: float = 0.55,
                             B: float = 1.5) -> np.ndarray:
  """``propensities`` from the training points per label and the training set size N
  (for a training set streamed from disk, never held as a matrix)."""
  freqs = np.asarray(freqs, np.float64)
  C = (np.log(N) - 1.0) * (B + 1.0) ** A
  return 1.0 / (1.0 + C * np.exp(-A * np.log(freqs + B)))


def _hits(topk: np.ndarray, Y: sp.csr_matrix) -> np.ndarray:
  """[n, k] boolean: is the i-th predicted label of each point a true label?"""
  n, k = topk.shape
  if Y.shape[0] != n:
    raise ValueError(f"{n} predictions but {Y.shape[0]} label rows")
  Y = sp.csr_matrix(Y)
  rows = np.repeat(np.arange(n), k)
  cols = topk.reshape(-1)
  valid = (cols >= 0) & (cols < Y.shape[1])
  out = np.zeros(n * k, bool)
  out[valid] = np.asarray(Y[rows[valid], cols[valid]]).ravel() > 0
  return out.reshape(n, k)


def _ideal_ps_dcg(Y: sp.csr_matrix, inv_p: np.ndarray, k: int, discount: np.ndarray):
  """Best achievable propensity-weighted sums per point: (PSP numerator, PSDCG)."""
  n = Y.shape[0]
  best_p = np.zeros(n)
  best_dcg = np.zeros(n)
  for i in range(n):
    labels = Y.indices[Y.indptr[i]:Y.indptr[i + 1]]
    w = np.sort(inv_p[labels])[::-1][:k]
    best_p[i] = w.sum()
    best_dcg[i] = (w * discount[:w.size]).sum()
  return best_p, best_dcg


def evaluate(topk: np.ndarray, Y: sp.csr_matrix, inv_propensity: np.ndarray | None = None,
             ks=(1, 3, 5)) -> dict[str, float]:
  """All metrics for predicted label ids ``topk`` [n, >= max(ks)] (best first).

  Returns a dict with keys 'P@k', 'nDCG@k', 'R@k' and, when ``inv_propensity`` [L] is
  given, 'PSP@k' and 'PSnDCG@k', for every k in ``ks``.
  """
  topk = np.asarray(topk)
  kmax = max(ks)
  if topk.shape[1] < kmax:
    raise ValueError(f"need at least {kmax} predictions per point, got {topk.shape[1]}")
  Y = sp.csr_matrix(Y)
  Y.sort_indices()
  hits = _hits(topk[:, :kmax], Y).astype(np.float64)
  num_labels = np.diff(Y.indptr)
  discount = 1.0 / np.log2(np.arange(2, kmax + 2))
  out = {}
  cum_hits = np.cumsum(hits, axis=1)
  cum_dcg = np.cumsum(hits * discount, axis=1)
  ideal = np.concatenate([[0.0], np.cumsum(discount)])
  if inv_propensity is not None:
    inv_p = np.asarray(inv_propensity, np.float64)
    safe = np.clip(topk[:, :kmax], 0, inv_p.size - 1)
    ps_hits = hits * inv_p[safe]
    cum_ps = np.cumsum(ps_hits, axis=1)
    cum_psdcg = np.cumsum(ps_hits * discount, axis=1)
  for k in ks:
    out[f"P@{k}"] = float(np.mean(cum_hits[:, k - 1] / k))
    idcg = ideal[np.minimum(num_labels, k)]
    out[f"nDCG@{k}"] = float(np.mean(np.divide(cum_dcg[:, k - 1], idcg,
                                               out=np.zeros_like(idcg), where=idcg > 0)))
    out[f"R@{k}"] = float(np.mean(np.divide(cum_hits[:, k - 1], num_labels,
                                            out=np.zeros(len(num_labels)),
                                            where=num_labels > 0)))
    if inv_propensity is not None:
      best_p, best_dcg = _ideal_ps_dcg(Y, inv_p, k, discount)
      out[f"PSP@{k}"] = float(cum_ps[:, k - 1].sum() / max(best_p.sum(), 1e-12))
      out[f"PSnDCG@{k}"] = float(cum_psdcg[:, k - 1].sum() / max(best_dcg.sum(), 1e-12))
  return out
