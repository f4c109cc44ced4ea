"""Reader for Extreme Classification Repository text files.

Format (plain or gzip):

    N D L                       header: points, feature dimension, label count
    l1,l2,... f1:v1 f2:v2 ...   one point per line, labels and features 0-based

A point with no label has no label field (its line starts with a space or directly with
a feature). The header's N, D and L are authoritative: they are never inferred from the
largest index seen, every index is checked against them, and the number of points must
equal N. Every error names the file and the 1-based line number.
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np
import scipy.sparse as sp

from mach_jax.data import batching


@dataclasses.dataclass
class XCData:
  """Features X [N, D] (CSR float32) and labels Y [N, L] (CSR float32, entries 1)."""

  X: sp.csr_matrix
  Y: sp.csr_matrix

  @property
  def num_points(self) -> int:
    return self.X.shape[0]

  @property
  def num_features(self) -> int:
    return self.X.shape[1]

  @property
  def num_labels(self) -> int:
    return self.Y.shape[1]

  # The training loop's source interface (shared with data.query_log.QueryLog).

  def label_counts(self) -> np.ndarray:
    """Training points per label."""
    return np.bincount(self.Y.indices, minlength=self.num_labels)

  def widths(self, batch_size: int):
    return batching.Widths.for_data(self.X, self.Y, batch_size)

  def first_batch(self, batch_size: int, widths, dense: bool = False, num_shards: int = 1):
    return batching.make_batch(self.X, self.Y, np.arange(min(batch_size, self.num_points)),
                               batch_size, widths, dense=dense, num_shards=num_shards)

  def batches(self, batch_size: int, **kwargs):
    """``batching.iterate_batches`` over this set (same keyword arguments)."""
    return batching.iterate_batches(self.X, self.Y, batch_size, **kwargs)


class XCFormatError(ValueError):
  """A malformed XC file; the message names the file and line."""


def _open(path: str):
  with open(path, "rb") as f:
    magic = f.read(2)
  if magic == b"\x1f\x8b":
    return gzip.open(path, "rt", encoding="utf-8")
  return open(path, "rt", encoding="utf-8")


def read_xc(path: str) -> XCData:
  """Read an XC-format file (see module docstring) into CSR matrices.

  Raises:
    XCFormatError: naming ``path`` and the line, for a bad header, a malformed token, an
      index outside [0, D) or [0, L), a duplicate feature, or a point count other than N.
  """
  path = os.fspath(path)
  with _open(path) as f:
    header = f.readline()
    parts = header.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
      raise XCFormatError(f"{path}:1: expected header 'N D L' (three non-negative "
                          f"integers), got {header.strip()[:80]!r}")
    N, D, L = (int(p) for p in parts)
    x_ptr, x_idx, x_val = [0], [], []
    y_ptr, y_idx = [0], []
    lineno = 1
    for lineno, line in enumerate(f, start=2):
      # A blank line is a point with neither labels nor features; a stray one shows up
      # as a point-count mismatch against the header below.
      tokens = line.split()
      start = 0
      if tokens and ":" not in tokens[0]:
        try:
          labels = [int(t) for t in tokens[0].split(",") if t != ""]
        except ValueError:
          raise XCFormatError(f"{path}:{lineno}: bad label field {tokens[0][:80]!r}") from None
        for l in labels:
          if not 0 <= l < L:
            raise XCFormatError(f"{path}:{lineno}: label {l} outside [0, {L}) from the header")
        y_idx.extend(sorted(set(labels)))
        start = 1
      seen = set()
      for t in tokens[start:]:
        fid, sep, val = t.partition(":")
        try:
          j, v = int(fid), float(val)
        except ValueError:
          raise XCFormatError(f"{path}:{lineno}: bad feature token {t[:80]!r} "
                              "(expected index:value)") from None
        if not sep:
          raise XCFormatError(f"{path}:{lineno}: bad feature token {t[:80]!r} "
                              "(expected index:value)")
        if not 0 <= j < D:
          raise XCFormatError(f"{path}:{lineno}: feature {j} outside [0, {D}) from the header")
        if j in seen:
          raise XCFormatError(f"{path}:{lineno}: feature {j} appears twice")
        if not np.isfinite(v):
          raise XCFormatError(f"{path}:{lineno}: feature {j} has non-finite value {val!r}")
        seen.add(j)
        x_idx.append(j)
        x_val.append(v)
      x_ptr.append(len(x_idx))
      y_ptr.append(len(y_idx))
  if len(x_ptr) - 1 != N:
    raise XCFormatError(f"{path}:{lineno}: header says N={N} points, file has {len(x_ptr) - 1}")
  X = sp.csr_matrix((np.asarray(x_val, np.float32), np.asarray(x_idx, np.int32),
                     np.asarray(x_ptr, np.int64)), shape=(N, D))
  Y = sp.csr_matrix((np.ones(len(y_idx), np.float32), np.asarray(y_idx, np.int32),
                     np.asarray(y_ptr, np.int64)), shape=(N, L))
  X.sort_indices()
  return XCData(X=X, Y=Y)


def write_xc(path: str, X: sp.csr_matrix, Y: sp.csr_matrix) -> None:
  """Write CSR X, Y as an XC file (gzip if the name ends in .gz), indices sorted per row.

  Readers such as scikit-learn's svmlight loader (used by peers) reject unsorted rows.
  """
  X, Y = sp.csr_matrix(X, copy=True), sp.csr_matrix(Y, copy=True)
  X.sort_indices()
  Y.sort_indices()
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", encoding="utf-8") as f:
    f.write(f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}\n")
    for i in range(X.shape[0]):
      labels = ",".join(str(l) for l in Y.indices[Y.indptr[i]:Y.indptr[i + 1]])
      feats = " ".join(f"{j}:{v:.6g}" for j, v in zip(X.indices[X.indptr[i]:X.indptr[i + 1]],
                                                       X.data[X.indptr[i]:X.indptr[i + 1]]))
      f.write(f"{labels} {feats}\n")
