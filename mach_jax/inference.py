"""Top-k prediction and evaluation with a trained model's parameters.

Each device computes its repetitions' logits; only the [R, b, B] logits cross devices
(gathered to every host), never a [b, K] score matrix. The merge over all K classes
(``mach_jax.decode``) then runs on the host's first device.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mach_jax import decode, host_memory, metrics, sharding
from mach_jax.data import batching


def batch_logits(params, logits_fn: Callable, X, Y, *, batch_size: int, mesh: Mesh,
                 dense: bool = False, widths: batching.Widths | None = None):
  """Yield (batch, logits [R, b, B] on the first device, real rows n) batch by batch.

  One batch (a single query, say) is made in the caller's thread; more are made ahead in a
  background thread (``batching.prefetch``). In a single process the logits move to the
  first device directly; across processes they are gathered through the hosts.
  """
  shards = mesh.shape[sharding.DATA_AXIS]
  batches = batching.iterate_batches(X, Y, batch_size, shuffle=False, dense=dense,
                                     num_shards=shards, widths=widths)
  first = jax.devices()[0]
  for batch in batches if X.shape[0] <= batch_size else batching.prefetch(batches):
    sharded = logits_fn(params, sharding.put(batch, sharding.batch_shardings(mesh, batch)))
    if jax.process_count() == 1:
      logits = jax.device_put(sharded, first)
    else:
      logits = jnp.asarray(multihost_utils.process_allgather(sharded, tiled=True))
    yield batch, logits, int(batch["mask"].sum())


def predict_topk(params, logits_fn: Callable, decoder: decode.Decoder, X, Y, *,
                 batch_size: int, k: int, estimators, mesh: Mesh, dense: bool = False,
                 widths: batching.Widths | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """(scores, class ids), each [n, k], for each estimator, batch by batch (one forward each).

  Args:
    params: the model's parameters (sharded on 'rep' over ``mesh``).
    logits_fn: ``sharding.make_logits_fn``'s jit(params, batch) -> [R, b, B].
    decoder: merges [R, b, B] logits into top-k classes.
    X, Y: CSR features [n, D] and labels [n, K] (Y may be empty; it only fills batches).
    widths: the batches' padded widths (default: from the data, ``Widths.for_data``).
  """
  out = {e: [] for e in estimators}
  for _, logits, n in batch_logits(params, logits_fn, X, Y, batch_size=batch_size, mesh=mesh,
                                   dense=dense, widths=widths):
    for e in estimators:
      scores, classes = decoder.topk(logits, k, e)
      out[e].append((np.asarray(scores)[:n], np.asarray(classes)[:n]))
  return {e: tuple(np.concatenate(part) for part in zip(*v)) for e, v in out.items()}


def evaluate(params, logits_fn: Callable, decoder: decode.Decoder, test, inv_propensity,
             config, mesh: Mesh, rows: np.ndarray | None = None) -> dict[str, Any]:
  """Metrics for every estimator of ``config.eval`` on ``test`` (or on its ``rows``)."""
  X, Y = (test.X, test.Y) if rows is None else (test.X[rows], test.Y[rows])
  ev = config.eval
  preds = predict_topk(params, logits_fn, decoder, X, Y, batch_size=ev.batch_size, k=ev.k,
                       estimators=tuple(ev.estimators), mesh=mesh,
                       dense=config.model.dense_input)
  host_memory.release()  # The score blocks just freed.
  return {e: metrics.evaluate(classes, Y, inv_propensity, ks=eval_ks(ev.k))
          for e, (_, classes) in preds.items()}


def eval_ks(k: int) -> tuple[int, ...]:
  """The cut-offs reported: 1, 3, 5 up to k, and k itself (k = 10: P@10 and R@10 too)."""
  return tuple(sorted({j for j in (1, 3, 5) if j <= k} | {k}))


def popularity_baseline(label_counts: np.ndarray, test, inv_propensity,
                        k: int) -> dict[str, float]:
  """Metrics of the query-blind answer: the k most frequent training labels for every point.

  The floor a model must clear; on a long-tailed catalogue it is near 0, on WordNet (where
  one label sits on 86% of the points) it is high.
  """
  top = np.argsort(-np.asarray(label_counts), kind="stable")[:k]
  return metrics.evaluate(np.tile(top, (test.num_points, 1)), test.Y, inv_propensity,
                          ks=eval_ks(k))
