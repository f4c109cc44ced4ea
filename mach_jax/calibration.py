"""Probabilities you can threshold: MACH's unbiased estimate of p(k | x), a monotone
calibration fitted on held-out points, and the expected calibration error.

For class k the ``unbiased`` estimator is

    p_k = B / (B - 1) * ((1/R) sum_r P_r(h_r(k) | x) - 1/B),   clipped to [0, 1]

(Medini et al., NeurIPS 2019, Theorem 1). What it estimates depends on the loss the
repetitions were trained with:

  * ``bce``: P_r(b | x) is the probability that *some* relevant class falls in bucket b,
    about the sum of the classes' relevance probabilities when few are relevant, so p_k
    estimates P(k is relevant | x): a marginal probability, one per class, to threshold.
  * ``softmax`` / ``softmax_hist``: P_r(b | x) is the mass of the point's label
    distribution q (1/|y| on each of its labels) in bucket b, so p_k estimates q(k | x),
    k's *share* of the point's labels; with one label per point, P(label = k | x).
  * The ``log_mean`` and ``logit_sum`` merges rank classes; their scores are no
    probabilities.

``Calibration`` maps the estimate p through a non-decreasing function fitted on held-out
points (each one's top-k classes against their relevance): Platt's sigmoid(logit(p) / T +
b), or an isotonic step function, which also fits estimates whose relation to relevance is
not logistic (with ``softmax_hist``, a label's share is about 1/|y|: a relevant label of a
point with many labels has a small estimate). Rankings do not move. Dividing the *bucket*
logits by a temperature instead (temperature scaling, Guo et al., ICML 2017) changes the
merged ranking, and did worse on bibtex (experiments/bench/NOTES.md).

Calibration is measured as the expected calibration error over each point's top-k
classes: their probabilities are binned into ``bins`` equal-width bins, and ECE is the
mean over bins, weighted by their counts, of |fraction relevant - mean probability|.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

EPS = 1e-4  # Probabilities are clipped to [EPS, 1 - EPS] before their log-odds are taken.


def _logit(p) -> np.ndarray:
  p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
  return np.log(p) - np.log1p(-p)


class Calibration(NamedTuple):
  """A non-decreasing map of the estimated probability p to a calibrated one.

  ``method`` 'platt': sigmoid(logit(p) / temperature + bias); 'isotonic': linear
  interpolation through the points (x, y), flat outside them. Non-decreasing, so it never
  reorders classes: top-k lists and P@k are unchanged, and a threshold on the calibrated
  probability is a threshold on p (``inverse``). The default is the identity (Platt with
  temperature 1, bias 0, up to the clipping to [EPS, 1 - EPS]).
  """

  method: str = "platt"
  temperature: float = 1.0
  bias: float = 0.0
  x: tuple = ()
  y: tuple = ()

  def apply(self, p) -> np.ndarray:
    """Calibrated probabilities of estimates ``p`` (any shape, in [0, 1])."""
    if self.method == "isotonic":
      return np.interp(np.asarray(p, np.float64), self.x, self.y)
    return 1.0 / (1.0 + np.exp(-(_logit(p) / self.temperature + self.bias)))

  def inverse(self, q: float) -> float:
    """The smallest estimate p whose calibrated probability is at least ``q``."""
    if self.method == "isotonic":
      x, y = np.asarray(self.x), np.asarray(self.y)
      i = int(np.searchsorted(y, q, side="left"))  # y is non-decreasing.
      if i == 0:
        return 0.0
      if i == len(y):
        return 1.0 + EPS  # No estimate reaches q: a cut nothing passes.
      if y[i] == y[i - 1]:
        return float(x[i])
      return float(x[i - 1] + (q - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))
    z = (float(_logit(q)) - self.bias) * self.temperature
    return float(1.0 / (1.0 + np.exp(-z)))

  def to_json(self) -> dict:
    if self.method == "isotonic":
      return {"method": "isotonic", "x": list(map(float, self.x)),
              "y": list(map(float, self.y))}
    return {"method": "platt", "temperature": float(self.temperature),
            "bias": float(self.bias)}

  @classmethod
  def from_json(cls, d: dict | None, where: str = "calibration") -> "Calibration":
    """The inverse of ``to_json`` (None: the identity); ValueError naming ``where``."""
    if d is None:
      return cls()
    try:
      method = d.get("method", "platt")
      if method == "platt" and set(d) <= {"method", "temperature", "bias"}:
        cal = cls(temperature=float(d["temperature"]), bias=float(d["bias"]))
        ok = cal.temperature > 0 and np.isfinite([cal.temperature, cal.bias]).all()
      elif method == "isotonic" and set(d) == {"method", "x", "y"}:
        cal = cls(method="isotonic", x=tuple(map(float, d["x"])), y=tuple(map(float, d["y"])))
        x, y = np.asarray(cal.x), np.asarray(cal.y)
        ok = (x.size == y.size >= 1 and np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
              and y.min() >= 0 and y.max() <= 1)
      else:
        ok = False
    except (TypeError, ValueError, KeyError, AttributeError):
      ok = False
    if not ok:
      raise ValueError(f"{where} {d!r}: expected {{'method': 'platt', 'temperature': > 0, "
                       "'bias': number}} or {'method': 'isotonic', 'x': [...], 'y': [...]} "
                       "(both non-decreasing, y in [0, 1])")
    return cal


def fit(probs: np.ndarray, relevant: np.ndarray, method: str = "platt") -> Calibration:
  """The ``Calibration`` of ``method`` fitted to held-out estimates.

  'platt': Platt scaling (Platt, 1999) on the estimates' log-odds, a logistic regression
  of ``relevant`` on logit(``probs``) written as a temperature and a bias. 'isotonic': the
  non-decreasing step function closest to the outcomes in squared error (isotonic
  regression, Zadrozny and Elkan, KDD 2002), its steps kept as (x, y) points.

  Args:
    probs: [n, k] estimates for held-out points (e.g. each one's top-k classes).
    relevant: [n, k] whether each of those classes is relevant.
    method: 'platt' or 'isotonic'.
  """
  p, y = np.asarray(probs, np.float64).ravel(), np.asarray(relevant, np.float64).ravel()
  if y.min() == y.max():
    raise ValueError("the held-out estimates are all relevant or all irrelevant: nothing "
                     "to fit a calibration on")
  if method == "isotonic":
    from sklearn.isotonic import IsotonicRegression
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return Calibration(method="isotonic", x=tuple(iso.X_thresholds_.tolist()),
                       y=tuple(iso.y_thresholds_.tolist()))
  if method != "platt":
    raise ValueError(f"method={method!r}: expected 'platt' or 'isotonic'")
  from scipy.optimize import minimize
  z = _logit(p)

  def loss(w):
    t = w[0] * z + w[1]
    return float(np.mean(np.logaddexp(0.0, t) - y * t))

  w = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead",
               options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000}).x
  if w[0] <= 0:
    raise ValueError(f"the fitted slope {w[0]:.3g} is not positive: the held-out estimates "
                     "do not rank relevant classes above others")
  return Calibration(temperature=float(1.0 / w[0]), bias=float(w[1]))


def log_loss(probs: np.ndarray, relevant: np.ndarray) -> float:
  """Mean binary log loss of probabilities against 0/1 outcomes (any equal shapes)."""
  p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
  y = np.asarray(relevant, np.float64)
  return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def expected_calibration_error(probs: np.ndarray, relevant: np.ndarray,
                               bins: int = 15) -> tuple[float, list[dict]]:
  """ECE of probabilities against 0/1 outcomes, and the reliability table.

  Args:
    probs: [n, k] probabilities (e.g. each point's top-k classes), in [0, 1].
    relevant: [n, k] whether each of those classes is relevant.
    bins: equal-width bins over [0, 1].

  Returns:
    (ECE, one dict per non-empty bin: lo, hi, count, mean probability, fraction relevant).
  """
  p = np.asarray(probs, np.float64).ravel()
  y = np.asarray(relevant, np.float64).ravel()
  if p.size == 0:
    raise ValueError("no probabilities to calibrate")
  if p.min() < 0 or p.max() > 1:
    raise ValueError(f"probabilities outside [0, 1]: [{p.min()}, {p.max()}]")
  edges = np.linspace(0.0, 1.0, bins + 1)
  which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
  table, ece = [], 0.0
  for i in range(bins):
    sel = which == i
    if not sel.any():
      continue
    conf, acc = float(p[sel].mean()), float(y[sel].mean())
    ece += sel.sum() / p.size * abs(acc - conf)
    table.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(sel.sum()),
                  "mean_probability": conf, "fraction_relevant": acc})
  return float(ece), table


def relevant_at(classes: np.ndarray, Y) -> np.ndarray:
  """[n, k] bool: whether each predicted class (row i of ``classes``) is in row i of CSR Y."""
  Y = Y.tocsr()
  out = np.zeros(classes.shape, bool)
  for i in range(classes.shape[0]):
    truth = Y.indices[Y.indptr[i]:Y.indptr[i + 1]]
    out[i] = np.isin(classes[i], truth)
  return out
