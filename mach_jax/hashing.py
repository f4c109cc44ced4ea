"""Hash families that map K classes to B buckets, R independent times.

MACH relabels class k as bucket h_r(k) in repetition r. Everything about the hash is
captured by a small, JSON-serialisable :class:`HashSpec` (family, K, B, R, seed), so the
bucket of any class is reproducible on any host or device and is saved with the weights.
The spec also carries the optional input hash (``input_dim``): repetition r maps feature id
j to g_r(j) in [0, input_dim) with its own murmur seed (and, with ``input_sign``, a seeded
+-1 sign, as in feature hashing), so each repetition owns an [input_dim, H] input table
instead of a [D, H] one and the R input hashes add to the ensemble's diversity.

All hash functions are written once over ``uint32`` arithmetic and run unchanged under
NumPy (host: inverted index, tests) and ``jax.numpy`` (device: labels are hashed inside the
jitted train step, so training never needs an [R, K] table).

Families:
  * ``universal``: the 2-universal family h(k) = ((a*k + b) mod p) mod B with the Mersenne
    prime p = 2^31 - 1 > K. a*k does not fit in 32 bits, so the product is computed with
    modular double-and-add (31 steps of additions that stay below 2^32).
  * ``murmur``: MurmurHash3 (x86, 32-bit) of the 4-byte class id with a per-repetition seed,
    bucket = hash mod B. With ``seed=0`` repetition r uses murmur seed r, exactly as the
    official MACH code does with ``murmurhash3_32(k, seed=r) % B``.
  * ``balanced``: a keyed pseudo-random permutation pi_r of [0, K) (a 4-round Feistel
    network with cycle-walking) followed by bucket = pi_r(k) mod B. Because pi_r is a
    bijection, every bucket holds exactly floor(K/B) or ceil(K/B) classes -- a seeded
    permutation cut into B equal slices (residue classes), computed without a table.

References:
  Carter & Wegman, "Universal classes of hash functions", JCSS 1979.
  Medini et al., "Extreme Classification in Log Memory using Count-Min Sketch", NeurIPS 2019.
  Black & Rogaway, "Ciphers with arbitrary finite domains", CT-RSA 2002 (cycle-walking).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

FAMILIES = ("universal", "murmur", "balanced")
# Not a hash: h(k) = k with R = 1 and B = K. MACH's code path then trains and decodes an
# ordinary K-way output layer -- the full-softmax (or one-vs-all, with BCE) baseline that
# isolates what the hashed output layer changes.
IDENTITY = "identity"
MERSENNE_P = (1 << 31) - 1
_INPUT_STREAM = 101  # SeedSequence stream of the input hash's seeds (families use 0-2).
_FEISTEL_ROUNDS = 4


@dataclasses.dataclass(frozen=True)
class HashSpec:
  """Everything needed to recompute every bucket id.

  Attributes:
    family: one of ``FAMILIES``.
    K: number of classes.
    B: number of buckets per repetition.
    R: number of repetitions.
    seed: master seed; per-repetition parameters are derived from it deterministically
      with ``numpy.random.SeedSequence`` (stable across NumPy versions and platforms).
    input_dim: D', the hashed input dimension of every repetition; 0 = no input hash (each
      repetition sees the D features as they are).
    input_sign: multiply each hashed feature's value by a seeded +-1 (input_dim > 0 only).
  """

  family: str
  K: int
  B: int
  R: int
  seed: int = 0
  input_dim: int = 0
  input_sign: bool = True

  def __post_init__(self):
    if self.family not in FAMILIES + (IDENTITY,):
      raise ValueError(f"HashSpec.family={self.family!r}: expected one of "
                       f"{FAMILIES + (IDENTITY,)}")
    if self.family == IDENTITY and (self.R != 1 or self.B != self.K):
      raise ValueError(f"HashSpec.family='identity' (the full-softmax baseline) needs R=1 and "
                       f"B=K={self.K}, got R={self.R}, B={self.B}")
    for name in ("K", "B", "R"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"HashSpec.{name}={value!r}: expected a positive integer")
    if self.K >= MERSENNE_P:
      raise ValueError(f"HashSpec.K={self.K}: at most {MERSENNE_P - 1} classes are supported")
    if self.B > self.K:
      raise ValueError(f"HashSpec.B={self.B} > K={self.K}: more buckets than classes")
    if self.seed < 0:
      raise ValueError(f"HashSpec.seed={self.seed}: expected a non-negative integer")
    if not isinstance(self.input_dim, (int, np.integer)) or not 0 <= self.input_dim < 1 << 31:
      raise ValueError(f"HashSpec.input_dim={self.input_dim!r}: expected 0 (no input hash) "
                       "or a positive integer below 2^31")

  # -- serialisation -------------------------------------------------------------------
  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "HashSpec":
    """The inverse of ``to_dict``; fields added later (the input hash) take their defaults."""
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)
                  if f.name in d or f.default is dataclasses.MISSING})

  def widened(self, K: int) -> "HashSpec":
    """This spec over a larger catalogue of K classes in which every class id below the
    current K keeps its buckets (a grown catalogue appends ids).

    Raises:
      ValueError: K is not larger, or the family's buckets depend on K ('balanced': its
        Feistel permutation spans [0, K); 'identity').
    """
    if K <= self.K:
      raise ValueError(f"K={K}: a widened catalogue needs more than the current {self.K} classes")
    if self.family in ("balanced", IDENTITY):
      raise ValueError(f"the {self.family!r} hash assigns buckets by K: its classes would move; "
                       "only 'murmur' and 'universal' models can be widened")
    return dataclasses.replace(self, K=int(K))

  # -- per-repetition parameters -------------------------------------------------------
  def params(self) -> np.ndarray:
    """Per-repetition hash parameters, uint32 [R, 4]; meaning depends on the family.

    universal: (a, b, -, -) with a in [1, p), b in [0, p).
    murmur: (murmur seed, -, -, -).
    balanced: four Feistel round keys.
    """
    if self.family == IDENTITY:
      return np.zeros((self.R, 4), np.uint32)
    if self.family == "murmur" and self.seed == 0:
      # Matches the official MACH code: repetition r hashes with murmur seed r.
      p = np.zeros((self.R, 4), np.uint32)
      p[:, 0] = np.arange(self.R, dtype=np.uint32)
      return p
    words = np.random.SeedSequence([self.seed, FAMILIES.index(self.family)]).generate_state(
        4 * self.R, dtype=np.uint32).reshape(self.R, 4)
    if self.family == "universal":
      a = 1 + (words[:, 0].astype(np.uint64) % np.uint64(MERSENNE_P - 1))
      b = words[:, 1].astype(np.uint64) % np.uint64(MERSENNE_P)
      words = words.copy()
      words[:, 0] = a.astype(np.uint32)
      words[:, 1] = b.astype(np.uint32)
    return words

  def feistel_half_bits(self) -> int:
    """Half width w of the Feistel domain [0, 4^w) that contains [0, K)."""
    bits = max(2, int(self.K - 1).bit_length())
    return (bits + 1) // 2

  # -- hashing -------------------------------------------------------------------------
  def buckets(self, classes, xp=np, params=None):
    """Bucket ids of ``classes`` in every repetition.

    Args:
      classes: integer array of any shape, values in [0, K). Negative entries (padding)
        are hashed as class 0; callers mask them.
      xp: ``numpy`` or ``jax.numpy``.
      params: rows of ``self.params()`` to use, for a device that owns only some of the
        repetitions (default: all R).

    Returns:
      int32 array of shape [R', *classes.shape] with values in [0, B), R' = len(params).
    """
    params = xp.asarray(self.params() if params is None else params)
    k = xp.maximum(xp.asarray(classes), 0).astype(xp.uint32)
    shape = (params.shape[0],) + (1,) * k.ndim
    cols = [params[:, i].reshape(shape) for i in range(4)]
    k = k[None]
    if self.family == IDENTITY:
      h = xp.broadcast_to(k, (params.shape[0],) + k.shape[1:])
    elif self.family == "universal" and xp is np:
      # NumPy has uint64: a*k < 2^62 is exact, and much faster than double-and-add.
      a, b = cols[0].astype(np.uint64), cols[1].astype(np.uint64)
      h = (a * k.astype(np.uint64) + b) % np.uint64(MERSENNE_P)
    elif self.family == "universal":
      h = universal_hash(k, cols[0], cols[1], xp)
    elif self.family == "murmur":
      h = murmur3_32(k, cols[0], xp)
    else:
      h = feistel_permute(k, cols, self.K, self.feistel_half_bits(), xp)
    return (h % h.dtype.type(self.B)).astype(xp.int32)

  def input_params(self) -> np.ndarray:
    """uint32 [R]: the murmur seed of each repetition's input hash (a stream of its own)."""
    return np.random.SeedSequence([self.seed, _INPUT_STREAM]).generate_state(
        self.R, dtype=np.uint32)

  def input_features(self, indices, values, xp=np, params=None):
    """Each repetition's view of sparse features under the input hash.

    Args:
      indices: integer feature ids [T] in [0, D) (padding may hold any id).
      values: their values [T] (padding: 0, which stays 0).
      xp: ``numpy`` or ``jax.numpy``.
      params: rows of ``self.input_params()`` (default: all R).

    Returns:
      (ids int32 [R', T] in [0, input_dim), values [R', T]): g_r(j), and the values times
      the sign s_r(j) when ``input_sign``. Colliding ids of one row add up downstream.
    """
    if not self.input_dim:
      raise ValueError("HashSpec.input_dim=0: there is no input hash to apply")
    seeds = xp.asarray(self.input_params() if params is None else params)
    h = murmur3_32(xp.asarray(indices)[None].astype(xp.uint32), seeds[:, None], xp)
    ids = ((h & xp.uint32(0x7FFFFFFF)) % xp.uint32(self.input_dim)).astype(xp.int32)
    values = xp.broadcast_to(xp.asarray(values)[None], ids.shape)
    if self.input_sign:
      values = xp.where((h >> xp.uint32(31)) == 1, -values, values)
    return ids, values

  def bucket_table(self) -> np.ndarray:
    """int32 [R, K] bucket of every class (host side; for decoding and statistics)."""
    return self.buckets(np.arange(self.K, dtype=np.int64))


# ---------------------------------------------------------------------------------------
# uint32 kernels shared by NumPy and jax.numpy.


def _rotl(x, r: int, xp):
  return (x << xp.uint32(r)) | (x >> xp.uint32(32 - r))


def mulmod_mersenne(a, k, xp, bits: int = 31):
  """(a * k) mod (2^31 - 1) for a, k < 2^31 using only uint32 additions.

  Double-and-add over the bits of k: every intermediate stays below 2p < 2^32.
  """
  p = xp.uint32(MERSENNE_P)

  def addmod(x, y):
    s = x + y
    return xp.where(s >= p, s - p, s)

  a = a % p
  k = k % p
  result = xp.zeros(xp.broadcast_shapes(a.shape, k.shape), xp.uint32)
  for bit in range(bits - 1, -1, -1):
    result = addmod(result, result)
    take = ((k >> xp.uint32(bit)) & xp.uint32(1)).astype(bool)
    result = xp.where(take, addmod(result, a), result)
  return result


def universal_hash(k, a, b, xp):
  """((a*k + b) mod p), p = 2^31 - 1; the caller reduces mod B."""
  p = xp.uint32(MERSENNE_P)
  ak = mulmod_mersenne(a, k, xp)
  s = ak + (b % p)
  return xp.where(s >= p, s - p, s)


def murmur3_32(key, seed, xp):
  """MurmurHash3 x86_32 of one little-endian 4-byte key (unsigned result)."""
  c1, c2 = xp.uint32(0xCC9E2D51), xp.uint32(0x1B873593)
  k1 = key.astype(xp.uint32) * c1
  k1 = _rotl(k1, 15, xp) * c2
  h1 = seed.astype(xp.uint32) ^ k1
  h1 = _rotl(h1, 13, xp) * xp.uint32(5) + xp.uint32(0xE6546B64)
  h1 = h1 ^ xp.uint32(4)
  return fmix32(h1, xp)


def fmix32(h, xp):
  h = h ^ (h >> xp.uint32(16))
  h = h * xp.uint32(0x85EBCA6B)
  h = h ^ (h >> xp.uint32(13))
  h = h * xp.uint32(0xC2B2AE35)
  return h ^ (h >> xp.uint32(16))


def _feistel_once(x, keys, half_bits: int, xp):
  mask = xp.uint32((1 << half_bits) - 1)
  left, right = x >> xp.uint32(half_bits), x & mask
  for key in keys[:_FEISTEL_ROUNDS]:
    left, right = right, left ^ (fmix32(right ^ key, xp) & mask)
  return (left << xp.uint32(half_bits)) | right


def feistel_permute(k, keys, K: int, half_bits: int, xp):
  """A keyed bijection of [0, K): Feistel network on [0, 4^w) with cycle-walking.

  Values that land outside [0, K) are permuted again until they fall inside; since the
  domain is at most 4K, fewer than four passes are expected per element.
  """
  x = _feistel_once(k, keys, half_bits, xp)
  bound = xp.uint32(K)
  if xp is np:
    keys = [np.broadcast_to(key, x.shape) for key in keys]
    out = x.copy()
    todo = np.nonzero(out >= bound)
    while todo[0].size:  # Re-permute only the elements still outside [0, K).
      y = _feistel_once(out[todo], [key[todo] for key in keys], half_bits, np)
      out[todo] = y
      keep = y >= bound
      todo = tuple(t[keep] for t in todo)
    return out
  import jax  # Local import keeps NumPy-only users (index building) free of jax.

  return jax.lax.while_loop(
      lambda x: xp.any(x >= bound),
      lambda x: xp.where(x >= bound, _feistel_once(x, keys, half_bits, xp), x),
      x)


# ---------------------------------------------------------------------------------------
# Host-side structures for decoding.


@dataclasses.dataclass(frozen=True)
class PaddedIndex:
  """Classes of each bucket as a dense int32 [R, B, S] block, padded with -1.

  S is the largest bucket. Decoding gathers whole buckets with one indexed read in fixed
  shapes (jit-friendly); the padding costs R*B*S - R*K entries, about 4% for murmur at
  K/B = 12,000 and nothing for the balanced family, where every bucket holds ceil(K/B) or
  floor(K/B) classes.
  """

  classes: np.ndarray  # int32 [R, B, S]
  sizes: np.ndarray  # int32 [R, B]

  @property
  def nbytes(self) -> int:
    return self.classes.nbytes + self.sizes.nbytes


def build_padded_index(spec: HashSpec, table: np.ndarray | None = None) -> PaddedIndex:
  """Vectorised build, one repetition at a time (peak memory ~ one [K] row of work arrays).

  Bucket ids are sorted as uint16 when B <= 65536, which NumPy sorts stably by radix sort:
  seconds per repetition at K = 50M.
  """
  sizes = np.zeros((spec.R, spec.B), np.int32)
  rows = []
  for r in range(spec.R):
    if table is None:
      t = spec.buckets(np.arange(spec.K, dtype=np.uint32), params=spec.params()[r:r + 1])[0]
    else:
      t = table[r]
    keys = t.astype(np.uint16) if spec.B <= 65536 else t
    order = np.argsort(keys, kind="stable").astype(np.int32)
    sizes[r] = np.bincount(t, minlength=spec.B)
    rows.append((order, t[order]))
  S = int(sizes.max())
  classes = np.full((spec.R, spec.B, S), -1, np.int32)
  for r, (order, sorted_buckets) in enumerate(rows):
    # Flat slot of the i-th class in bucket order: bucket * S + (i - first slot of bucket).
    shift = (np.arange(spec.B, dtype=np.int64) * S
             - np.concatenate([[0], np.cumsum(sizes[r], dtype=np.int64)[:-1]]))
    slots = np.arange(spec.K, dtype=np.int64) + shift[sorted_buckets]
    classes[r].reshape(-1)[slots] = order
  return PaddedIndex(classes=classes, sizes=sizes)
