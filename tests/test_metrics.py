import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax import metrics


def _Y(rows, L):
  indptr = np.cumsum([0] + [len(r) for r in rows])
  return sp.csr_matrix((np.ones(indptr[-1]), np.concatenate([np.array(r, int) for r in rows]
                                                             if rows else []), indptr),
                       shape=(len(rows), L))


def test_precision_ndcg_recall_hand_computed():
  Y = _Y([[0, 2], [1], []], L=5)
  topk = np.array([[2, 3, 0, 4, 1],
                   [4, 1, 0, 2, 3],
                   [0, 1, 2, 3, 4]])
  m = metrics.evaluate(topk, Y, ks=(1, 3, 5))
  # P@k divides by k; the row without labels counts as 0.
  assert m["P@1"] == pytest.approx((1 + 0 + 0) / 3)
  assert m["P@3"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
  assert m["P@5"] == pytest.approx((2 / 5 + 1 / 5 + 0) / 3)
  d = 1 / np.log2(np.arange(2, 7))
  ndcg3_row0 = (d[0] + d[2]) / (d[0] + d[1])
  ndcg3_row1 = d[1] / d[0]
  assert m["nDCG@3"] == pytest.approx((ndcg3_row0 + ndcg3_row1) / 3)
  assert m["R@1"] == pytest.approx((0.5 + 0 + 0) / 3)
  assert m["R@3"] == pytest.approx((1 + 1 + 0) / 3)


def test_precision_is_not_divided_by_number_of_labels():
  # One label, predicted first: P@5 = 1/5, not 1/min(1, 5) = 1 (the official MACH code's).
  m = metrics.evaluate(np.array([[3, 0, 1, 2, 4]]), _Y([[3]], 5))
  assert m["P@5"] == pytest.approx(0.2)
  assert m["nDCG@5"] == pytest.approx(1.0)


def test_propensity_scored_metrics_hand_computed():
  Y = _Y([[0, 1], [1]], L=3)
  inv_p = np.array([4.0, 1.0, 2.0])
  topk = np.array([[1, 2, 0], [1, 0, 2]])
  m = metrics.evaluate(topk, Y, inv_propensity=inv_p, ks=(1, 3))
  # PSP@1: hits weighted by 1/p, over the best achievable (row 0 could score 4 at rank 1).
  assert m["PSP@1"] == pytest.approx((1.0 + 1.0) / (4.0 + 1.0))
  assert m["PSP@3"] == pytest.approx((1.0 + 4.0 + 1.0) / (4.0 + 1.0 + 1.0))
  d = 1 / np.log2(np.arange(2, 5))
  got = (1.0 * d[0] + 4.0 * d[2]) + 1.0 * d[0]
  best = (4.0 * d[0] + 1.0 * d[1]) + 1.0 * d[0]
  assert m["PSnDCG@3"] == pytest.approx(got / best)


def test_propensities_follow_jain_et_al():
  Y = _Y([[0], [0], [0, 1], []], L=3)
  A, B = 0.55, 1.5
  N = 4
  C = (np.log(N) - 1) * (B + 1) ** A
  expected = 1 / (1 + C * np.exp(-A * np.log(np.array([3, 1, 0]) + B)))
  np.testing.assert_allclose(metrics.propensities(Y, A, B), expected)
  # Rare labels are less likely to be observed: lower propensity.
  p = metrics.propensities(Y)
  assert p[0] > p[1] > p[2]


def test_too_few_predictions_is_an_error():
  with pytest.raises(ValueError, match="at least 5"):
    metrics.evaluate(np.zeros((1, 3), int), _Y([[0]], 3))
