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
import hashlib
import io
import os
import re
import warnings

import numpy as np
import scipy.sparse as sp

from mach_jax import whole_file
from mach_jax.data import batching
from mach_jax.data.lines import read_text_lines


@dataclasses.dataclass
class XCData:
  """Features X [N, D] (CSR float32) and labels Y [N, L] (CSR float32, entries 1)."""

  X: sp.csr_matrix
  Y: sp.csr_matrix
  featurizer = None  # Features come given, not computed from text (see QueryLog).

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

  def widths(self, batch_size: int, distinct: bool = False):
    return batching.Widths.for_data(self.X, self.Y, batch_size, distinct)

  def first_batch(self, batch_size: int, widths, dense: bool = False, num_shards: int = 1):
    return batching.make_batch(self.X, self.Y, np.arange(min(batch_size, self.num_points)),
                               batch_size, widths, dense=dense, num_shards=num_shards)

  def batches(self, batch_size: int, **kwargs):
    """``batching.iterate_batches`` over this set (same keyword arguments)."""
    return batching.iterate_batches(self.X, self.Y, batch_size, **kwargs)

  def split(self, held: np.ndarray) -> tuple[XCData, XCData]:
    """(the rows where ``held`` is False, the rows where it is True), in order."""
    keep, out = np.flatnonzero(~held), np.flatnonzero(held)
    return XCData(self.X[keep], self.Y[keep]), XCData(self.X[out], self.Y[out])


class XCFormatError(ValueError):
  """A malformed XC file; the message names the file and line."""


# The grammar, in ASCII: fields are separated by spaces or tabs; a line ends at "\n" (one
# "\r" before it is dropped); an index is decimal digits; a value is a decimal number.
_VALUE = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_FEATURES = re.compile(rf"(?:[0-9]+:{_VALUE} )*")  # Joined feature tokens, 'index:value '.
_LABELS = re.compile(r"[0-9,]*")
_HEADER = re.compile(r"[ \t]*([0-9]+)[ \t]+([0-9]+)[ \t]+([0-9]+)[ \t]*")
_LABEL_FIELD = re.compile(r"-?[0-9]+(?:,-?[0-9]+)*")
_FEATURE_TOKEN = re.compile(r"(-?[0-9]+):(\S*)")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_ODD_SPACE = re.compile(r"[^\S \t\n]")  # Whitespace that is not a separator.
_CHECK_LINES = 1024  # Lines per block of the vectorised reader's grammar check.


def read_xc(path: str, cache_dir: str | None = None) -> XCData:
  """Read an XC-format file (see module docstring) into CSR matrices.

  The whole file is first parsed with a few vectorised passes (regular expressions check
  every token's shape, NumPy converts and range-checks them all at once); if anything is off,
  the file is read again line by line, which names the first bad line. Both give identical
  matrices (pinned in tests/test_xc.py); the fast pass reads bibtex about 4x faster.

  Args:
    path: the file, plain or gzip.
    cache_dir: if set, the parsed matrices are kept there as an ``.npz`` named after the
      file's absolute path, size and modification time, and the next read of the same,
      unchanged file loads that instead of parsing (bibtex train: 0.28 s -> 0.004 s on the
      2-core dev VM): a sweep parses each file once. A changed file gets a new name, so a
      stale entry is never read; an unreadable entry is reported and replaced.

  Raises:
    XCFormatError: naming ``path`` and the line, for a bad header, a malformed token, an
      index outside [0, D) or [0, L), a duplicate feature, or a point count other than N.
  """
  path = os.fspath(path)
  cached = _cache_file(path, cache_dir) if cache_dir else None
  if cached is not None and os.path.exists(cached):
    data = _load_cached(cached)
    if data is not None:
      return data
  data = _parse(path)
  if cached is not None:
    _save_cached(cached, data)
  return data


def _parse(path: str) -> XCData:
  lines = read_text_lines(path, XCFormatError)
  header = _HEADER.fullmatch(lines[0]) if lines else None
  if header is None:
    raise XCFormatError(f"{path}:1: expected header 'N D L' (three non-negative "
                        f"integers), got {(lines[0] if lines else '')[:80]!r}")
  N, D, L = (int(p) for p in header.groups())
  if max(N, D, L) >= 2**31:
    raise XCFormatError(f"{path}:1: header {lines[0].strip()!r}: N, D and L must each be "
                        "below 2**31 (indices are 32-bit)")
  lines = lines[1:]
  data = _read_fast(lines, N, D, L)
  return data if data is not None else _read_lines(path, lines, N, D, L)


_CACHE_FORMAT = 1  # Bump when the parsed representation changes.


def _cache_file(path: str, cache_dir: str) -> str:
  st = os.stat(path)
  key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{_CACHE_FORMAT}"
  name = os.path.basename(path).split(".")[0]
  return os.path.join(cache_dir, f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz")


def _save_cached(cached: str, data: XCData) -> None:
  """Write ``cached`` atomically (temporary file, then rename): concurrent runs of a sweep
  may race to write it, and a reader never sees half a file."""
  os.makedirs(os.path.dirname(cached), exist_ok=True)
  with whole_file.replacing(cached, "wb", unique=True) as f:
    np.savez(f, x_data=data.X.data, x_indices=data.X.indices, x_indptr=data.X.indptr,
             y_indices=data.Y.indices, y_indptr=data.Y.indptr,
             shape=np.array([data.num_points, data.num_features, data.num_labels]))


def _load_cached(cached: str) -> XCData | None:
  try:
    with np.load(cached, allow_pickle=False) as z:
      N, D, L = (int(v) for v in z["shape"])
      X = sp.csr_matrix((z["x_data"], z["x_indices"], z["x_indptr"]), shape=(N, D))
      Y = sp.csr_matrix((np.ones(z["y_indices"].size, np.float32), z["y_indices"],
                         z["y_indptr"]), shape=(N, L))
    X.check_format(full_check=True)
    Y.check_format(full_check=True)
    return XCData(X=X, Y=Y)
  except Exception as e:  # A damaged entry: parse the file again and rewrite it.
    warnings.warn(f"{cached}: unreadable cache entry ({type(e).__name__}: {e}); "
                  "parsing the file again", RuntimeWarning)
    return None


def _read_fast(lines: list[str], N: int, D: int, L: int) -> XCData | None:
  """The vectorised reader; None when the file is not exactly well-formed."""
  if len(lines) != N or any(_ODD_SPACE.search(line) for line in lines):
    return None
  labels, feats, y_len, x_len = [], [], [], []
  for line in lines:
    tokens = line.split()
    if tokens and ":" not in tokens[0]:
      labels.append(tokens[0])
      y_len.append(tokens[0].count(",") + 1)
      tokens = tokens[1:]
    else:
      y_len.append(0)
    feats.append(" ".join(tokens))
    x_len.append(len(tokens))
  label_text = ",".join(labels)
  if not _LABELS.fullmatch(label_text):
    return None
  # The features' grammar is checked on blocks of lines: one match over the whole text keeps
  # a backtracking record per token (a 999,000-line file of 19M tokens: 10 GB).
  blocks = []
  for i in range(0, len(feats), _CHECK_LINES):
    blocks.append("".join(f + " " for f in feats[i:i + _CHECK_LINES] if f))
    if not _FEATURES.fullmatch(blocks[-1]):
      return None
  feat_text = "".join(blocks)
  del blocks
  y_tokens = label_text.split(",") if label_text else []
  if "" in y_tokens:  # '1,,2' or a trailing comma: the line reader decides.
    return None
  try:
    with warnings.catch_warnings():  # fromstring warns (and stops) at a bad number.
      warnings.simplefilter("error")
      numbers = np.fromstring(feat_text.replace(":", " "), dtype=np.float64, sep=" ")
    y_idx = np.array(y_tokens, np.int64)
  except (ValueError, OverflowError, DeprecationWarning):
    return None
  if numbers.size != 2 * sum(x_len):
    return None
  pairs = numbers.reshape(-1, 2)
  if (np.abs(pairs[:, 1]) > _FLOAT32_MAX).any():  # Beyond float32: the line reader names it.
    return None
  x_idx, x_val = pairs[:, 0], pairs[:, 1].astype(np.float32)
  if (x_idx >= D).any() or (y_idx >= L).any() or not np.isfinite(x_val).all() \
      or not np.isfinite(pairs[:, 1]).all():
    return None
  x_ptr = np.concatenate([[0], np.cumsum(x_len)]).astype(np.int64)
  y_ptr = np.concatenate([[0], np.cumsum(y_len)]).astype(np.int64)
  X = sp.csr_matrix((x_val, x_idx.astype(np.int32), x_ptr), shape=(N, D))
  X.sort_indices()
  rows = np.repeat(np.arange(N), np.diff(x_ptr))
  if np.any((np.diff(X.indices) == 0) & (rows[1:] == rows[:-1])):
    return None  # A feature twice in one point.
  Y = sp.csr_matrix((np.ones(y_idx.size, np.float32), y_idx.astype(np.int32), y_ptr),
                    shape=(N, L))
  Y.sum_duplicates()  # Sorted, a repeated label counted once (as the line reader does).
  Y.data[:] = 1.0
  return XCData(X=X, Y=Y)


def _read_lines(path: str, lines: list[str], N: int, D: int, L: int) -> XCData:
  """The line-by-line reader: slower, and names the first bad line."""
  x_ptr, x_idx, x_val = [0], [], []
  y_ptr, y_idx = [0], []
  lineno = 1
  for lineno, line in enumerate(lines, start=2):
    # A blank line is a point with neither labels nor features; a stray one shows up
    # as a point-count mismatch against the header below.
    odd = _ODD_SPACE.search(line)
    if odd:
      raise XCFormatError(f"{path}:{lineno}: unexpected character {odd.group()!r} (fields are "
                          "separated by spaces or tabs)")
    tokens = line.split()
    start = 0
    if tokens and ":" not in tokens[0]:
      if not _LABEL_FIELD.fullmatch(tokens[0]):
        raise XCFormatError(f"{path}:{lineno}: bad label field {tokens[0][:80]!r} "
                            "(expected comma-separated label ids)")
      labels = [int(t) for t in tokens[0].split(",")]
      for l in labels:
        if not 0 <= l < L:
          raise XCFormatError(f"{path}:{lineno}: label {l} outside [0, {L}) from the header")
      y_idx.extend(sorted(set(labels)))
      start = 1
    seen = set()
    for t in tokens[start:]:
      token = _FEATURE_TOKEN.fullmatch(t)
      val = token.group(2) if token else ""
      if token is None or not (re.fullmatch(_VALUE, val) or _NON_FINITE.fullmatch(val)):
        raise XCFormatError(f"{path}:{lineno}: bad feature token {t[:80]!r} "
                            "(expected index:value)")
      j, v = int(token.group(1)), float(val)
      if not 0 <= j < D:
        raise XCFormatError(f"{path}:{lineno}: feature {j} outside [0, {D}) from the header")
      if j in seen:
        raise XCFormatError(f"{path}:{lineno}: feature {j} appears twice")
      if not (np.isfinite(v) and abs(v) <= _FLOAT32_MAX):
        raise XCFormatError(f"{path}:{lineno}: feature {j} has non-finite value {val!r}"
                            + (" (beyond float32's range)" if np.isfinite(v) else ""))
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

  Readers such as scikit-learn's svmlight loader (used by peers) reject unsorted rows. The
  gzip header carries no time stamp, so the same matrices give the same bytes.
  """
  X, Y = sp.csr_matrix(X, copy=True), sp.csr_matrix(Y, copy=True)
  X.sort_indices()
  Y.sort_indices()
  if str(path).endswith(".gz"):
    f = io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8")
  else:
    f = open(path, "w", encoding="utf-8")
  with f:
    f.write(f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}\n")
    for i in range(X.shape[0]):
      labels = ",".join(str(l) for l in Y.indices[Y.indptr[i]:Y.indptr[i + 1]])
      feats = " ".join(f"{j}:{v:.6g}" for j, v in zip(X.indices[X.indptr[i]:X.indptr[i + 1]],
                                                       X.data[X.indptr[i]:X.indptr[i + 1]]))
      f.write(f"{labels} {feats}\n")
