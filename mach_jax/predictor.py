"""Predictor: top-k classes for new points from a model folder (``mach_jax.bundle``).

It needs no training code: it builds the model from the folder's config and runs the same
logits function and decoder as evaluation::

    predictor = Predictor.load("runs/bibtex/model")
    scores, classes = predictor.predict_topk(X, k=5)   # X: scipy CSR [n, D]
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
import scipy.sparse as sp

from mach_jax import (
  bag,
  bundle,
  calibration as calibration_lib,
  config as config_lib,
  decode,
  inference,
  model as model_lib,
  sharding,
  steps,
)
from mach_jax.data import batching
from mach_jax.hashing import HashSpec

# A few rows' nonzeros are padded to at least this width, and above it to one of four widths
# per power of two (``batching.round_up_width``): a stream of single queries compiles the
# program for a few widths, a short query does not gather hundreds of padding rows of every
# repetition's table, and a query pays at most 25% padding (a bibtex query, 68 nonzeros:
# 80 wide, 0.50-0.60 ms; 128 wide, 0.80 ms; experiments/bench/NOTES.md).
SMALL_BATCH_MIN_NNZ = 32
SMALL_BATCH_WIDTHS_PER_OCTAVE = 4


def query_width(nnz: int) -> int:
  """The padded width of a few rows holding ``nnz`` nonzeros."""
  return batching.round_up_width(nnz, minimum=SMALL_BATCH_MIN_NNZ,
                                 steps_per_octave=SMALL_BATCH_WIDTHS_PER_OCTAVE)


class Predictor:
  """Top-k classes for new points from an exported model folder, on one device."""

  def __init__(self, path: str, info: dict, config: ml_collections.ConfigDict, params: Any,
               feature_major: bool = True):
    self.path = path
    self.info = info
    self.config = config
    self.spec = HashSpec.from_dict(info["hash_spec"])
    self.num_features = int(info["num_features"])
    self.mesh = sharding.make_mesh((("data", 1), ("rep", 1)), self.spec.R, 1,
                                   devices=jax.devices()[:1])
    # A few rows run the repetitions side by side whatever training did (one after another
    # costs a single query time); full batches go through ``sharding.make_logits_fn``,
    # which runs them one after another.
    served = config.copy_and_resolve_references()
    served.model.sequential_reps = False
    self.parts = config_lib.build(served, self.num_features, self.spec.K, total_steps=1)
    model = self.parts.model
    # Per-repetition tables over unhashed features are served feature-major unless
    # ``feature_major`` is False (``model_lib.to_feature_major``; faster, and the same
    # answers): ``params`` hold the table in that layout then.
    self.feature_major = (feature_major and model.sparse_input and not model.shared_input
                          and self.spec.input_dim == 0 and jax.process_count() == 1)
    self.params = model_lib.to_feature_major(params) if self.feature_major else params
    # Input-hashed per-repetition tables: one bag over the stacked tables
    # (``model_lib.hashed_logits``) on one process.
    self.hashed = (model.sparse_input and not model.shared_input and self.spec.input_dim > 0
                   and jax.process_count() == 1)
    self._decoders: dict[tuple, decode.Decoder] = {}
    self._fused: dict[tuple, Any] = {}
    self._logits = None

  @classmethod
  def load(cls, path: str, feature_major: bool = True) -> "Predictor":
    info, config, params = bundle.load(path)
    return cls(path, info, config, params, feature_major=feature_major)

  @property
  def calibration(self) -> calibration_lib.Calibration:
    """The calibration saved with the model (``experiments.calibrate``; else the identity)."""
    return calibration_lib.Calibration.from_json(self.info.get("calibration"))

  def predict_topk(self, X: sp.csr_matrix, k: int = 5, estimator: str | None = None,
                   batch_size: int | None = None, method: str | None = None,
                   m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, k], class ids [n, k]), best first, for CSR features X [n, D].

    ``estimator``, ``method`` ('exact' | 'candidates') and ``m`` default to the model's
    evaluation config; ``batch_size`` to that config's, or the power of two at or above
    the number of rows when that is smaller. Candidate decoding may find fewer than k
    distinct classes for a point: its remaining slots hold class -1 and score -inf.

    Raises:
      ValueError: k is outside [1, ``max_k(method, m)``], or batch_size or m below 1.
    """
    X = self._check(X)
    ev = self.config.eval
    estimator = estimator or ev.estimator
    # Few rows (a single query) are padded to the next power of two, not to the evaluation
    # batch: each size compiles once, and a query does not pay for 511 padding rows.
    if batch_size is not None and batch_size < 1:  # (-3 failed deep in the decoder; 0 was None.)
      raise ValueError(f"batch_size={batch_size}: expected an integer >= 1, or None")
    batch_size = batch_size or min(ev.batch_size, 1 << max(0, X.shape[0] - 1).bit_length())
    key = self._decoder_key(batch_size, method, m)
    top = self._decoder(key).max_k
    if not 1 <= k <= top:
      raise ValueError(f"k={k}: this model's {key[1]} decoding answers 1 <= k <= {top}"
                       + (f" (the R·m·S slots of m={key[2]} buckets a repetition; raise "
                          "m, or decode exactly: method='exact', --decode=exact)"
                          if top < self.spec.K else ""))
    if batch_size < ev.batch_size and jax.process_count() == 1:
      # A few rows: nonzeros padded to ``query_width``, and one jitted call from the padded
      # batch to the top k (no mesh, no separately dispatched decoder pieces, no background
      # thread).
      batch = batching.pack_features(X, batch_size, query_width(X.nnz),
                                     dense=self.config.model.dense_input)
      scores, classes = self._fused_fn(key, k, estimator)(self.params, batch)
      n = X.shape[0]
      return np.asarray(scores)[:n], np.asarray(classes)[:n]
    Y = sp.csr_matrix((X.shape[0], self.spec.K), dtype=np.float32)
    widths = None  # Full batches: widths from the data, as in evaluation.
    if batch_size < ev.batch_size:  # A few rows over several processes.
      widths = batching.Widths(nnz=query_width(X.nnz))
    out = inference.predict_topk(self.params, self._logits_fn(), self._decoders[key],
                                 X, Y, batch_size=batch_size, k=k, estimators=(estimator,),
                                 mesh=self.mesh, dense=self.config.model.dense_input,
                                 widths=widths)
    return out[estimator]

  def max_k(self, method: str | None = None, m: int | None = None) -> int:
    """The largest k that ``predict_topk`` takes with this ``method`` and ``m`` (default:
    the model's): K for exact decoding; for candidates at most the R·m·S classes of the
    repetitions' top-m buckets. Candidate decoding may find fewer distinct classes for a
    point: its remaining slots hold class -1 and score -inf."""
    key = self._decoder_key(1, method, m)  # (A candidates decoder shares the index.)
    return self.spec.K if key[1] == "exact" else self._decoder(key).max_k

  def _decoder_key(self, batch_size: int, method: str | None, m: int | None) -> tuple:
    ev = self.config.eval
    return batch_size, method or ev.decode, ev.candidates_m if m is None else m  # (0: refused.)

  def _decoder(self, key: tuple) -> decode.Decoder:
    """The decoder of (batch size, method, m); candidate decoders share one index."""
    if key not in self._decoders:
      config = ml_collections.ConfigDict(self.config.to_dict())
      config.eval.update(batch_size=key[0], decode=key[1], candidates_m=key[2])
      index = next((d.index for d in self._decoders.values() if d.index is not None), None)
      self._decoders[key] = config_lib.make_decoder(config, self.spec, index)
    return self._decoders[key]

  def warm_up(self, k: int = 10, batch_size: int = 1, max_nnz: int = 512,
              **predict_kwargs) -> int:
    """Compile the few-rows path ahead of the first query: ``batch_size`` rows at every
    padded width of nonzeros (``query_width``) up to the one that holds ``max_nnz``, for
    ``predict_topk(..., k=k, **predict_kwargs)``. A wider query still works; it compiles
    when it comes. Returns the number of widths compiled.
    """
    widths = [query_width(0)]
    while widths[-1] < max_nnz:
      widths.append(query_width(widths[-1] + 1))
    for w in widths:
      X = sp.csr_matrix((np.zeros(w, np.float32), np.arange(w) % self.num_features,
                         [0] + [w] * batch_size), shape=(batch_size, self.num_features))
      self.predict_topk(X, k=k, batch_size=batch_size, **predict_kwargs)
    return len(widths)

  def _fused_fn(self, key: tuple, k: int, estimator: str):
    """jit(params, batch) -> (scores [b, k], classes [b, k]): logits and decoding in one
    program, for the decoder of ``key`` (compiled once per batch shape)."""
    fkey = (key, k, estimator)
    if fkey not in self._fused:
      decoder, forward = self._decoders[key], self._forward
      self._fused[fkey] = jax.jit(lambda params, batch: decoder.topk(
          forward(params, batch), k, estimator))
    return self._fused[fkey]

  def _forward(self, params, batch):
    """Bucket logits [R, b, B] of a batch on one device, from ``self.params``' layout."""
    if self.feature_major:
      return model_lib.feature_major_logits(self.parts.model, params, batch)
    model, T = self.parts.model, batch["indices"].shape[-1] if "indices" in batch else 0
    if self.hashed and not bag.use_dense_bag(model.embedding_bag, batch["mask"].shape[0],
                                             self.spec.input_dim, T):
      x = steps.model_input(batch, True, self.spec)
      return model_lib.hashed_logits(model, params, x)
    return steps.logits_step(params, batch, model=model, spec=self.spec)

  def predict_proba(self, X: sp.csr_matrix, threshold: float = 0.5, *,
                    calibrated: bool = True, batch_size: int | None = None,
                    method: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every class whose probability is at least ``threshold``, per point.

    The probability is the ``unbiased`` estimator clipped to [0, 1], mapped through the
    model's calibration when ``calibrated`` (the identity if none was fitted); what it
    means for each loss: ``mach_jax.calibration``.

    Under candidate decoding only the candidates (``max_k``'s slots) are scored.

    Returns:
      One (class ids, probabilities) pair per row of X, most probable first.
    """
    low = calibration_lib.EPS if calibrated else 0.0  # (Calibrated: at least EPS, all pass.)
    if not low < threshold < 1.0:
      raise ValueError(f"threshold={threshold}: expected a probability in ({low:g}, 1)" + (
          "; calibrated probabilities are at least calibration.EPS: for the estimate itself "
          "pass calibrated=False" if calibrated else ""))
    cal = self.calibration if calibrated else calibration_lib.Calibration()
    cut = cal.inverse(threshold) if calibrated else threshold  # The same cut on the estimate.
    top = self.max_k(method)
    k = top if cut <= 0 else min(top, max(16, int(np.ceil(2.0 / cut))))  # cut 0: every class.
    while True:  # Widen until every row's last estimate is below the cut.
      scores, ids = self.predict_topk(X, k=k, estimator="unbiased", batch_size=batch_size,
                                      method=method)
      est = np.clip(scores, 0.0, 1.0)  # (An empty candidate slot, -inf, is 0.)
      if k == top or not (est[:, -1] >= cut).any():
        break
      k = min(top, 2 * k)
    probs = cal.apply(est) if calibrated else est
    keep = (probs >= threshold) & (ids >= 0)
    return [(ids[i][keep[i]], probs[i][keep[i]]) for i in range(len(ids))]

  def _check(self, X) -> sp.csr_matrix:
    X = sp.csr_matrix(X, dtype=np.float32)
    if X.shape[1] != self.num_features:
      raise ValueError(f"X has {X.shape[1]} features; the model at {self.path} expects "
                       f"{self.num_features}")
    if not np.isfinite(X.data).all():  # (They would rank classes by NaN: arbitrarily.)
      rows = np.unique(np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[
          ~np.isfinite(X.data)])
      raise ValueError(f"X holds non-finite values (NaN or inf) in rows {rows[:10].tolist()}"
                       + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
                       + " (0-based); replace or drop them before predicting")
    return X

  def _logits_fn(self):
    if self._logits is None and (self.feature_major or self.hashed):  # One device.
      self._logits = jax.jit(self._forward)
    if self._logits is None:
      keys = ("dense", "labels", "mask") if self.config.model.dense_input else \
          ("indices", "values", "segments", "labels", "mask")
      example = {key: np.zeros(1) for key in keys}
      self._logits = sharding.make_logits_fn(self.parts, self.mesh, self.params, example)
    return self._logits
