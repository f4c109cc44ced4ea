"""Streaming a query log from disk: every query once per epoch, bounded shuffle, clear errors."""

import os

import numpy as np
import pytest
import scipy.sparse as sp

from mach_jax.data import batching
from mach_jax.data.query_log import QueryLog, QueryLogError, RowStack
from mach_jax.data.text import TextFeaturizer
from tests.helpers import write_log

F = TextFeaturizer(num_features=1 << 12)


def test_scan_counts_and_epoch_covers_every_query_once(tmp_path):
  path = write_log(tmp_path / "q.tsv", 1000)
  log = QueryLog(str(path), F, 50, buffer_size=300, read_chunk=64)
  assert log.num_points == 1000 and log.max_labels == 2
  assert log.label_counts().sum() == sum(len(l.split("\t")[1].split(","))
                                         for l in open(path))
  widths = log.widths(128)
  batches = list(log.batches(128, seed=1, epoch=0, widths=widths))
  assert len(batches) == -(-1000 // 128)
  assert sum(int(b["mask"].sum()) for b in batches) == 1000
  # Every (query, label) pair appears exactly once: compare label multisets.
  labels = np.concatenate([b["labels"][b["mask"] > 0].ravel() for b in batches])
  assert np.array_equal(np.bincount(labels[labels >= 0], minlength=50), log.label_counts())
  # Feature mass too: every real row is a unit vector, padding adds nothing.
  for b in batches:
    mass = np.zeros(128)
    np.add.at(mass, b["segments"], b["values"] ** 2)
    np.testing.assert_allclose(mass, b["mask"], atol=1e-5)


def test_order_is_seeded_shuffled_and_resumable(tmp_path):
  log = QueryLog(str(write_log(tmp_path / "q.tsv", 700)), F, 50, buffer_size=200,
                 read_chunk=50)
  w = log.widths(64)
  a = list(log.batches(64, seed=3, epoch=0, widths=w))
  b = list(log.batches(64, seed=3, epoch=0, widths=w))
  c = list(log.batches(64, seed=3, epoch=1, widths=w))
  plain = list(log.batches(64, shuffle=False, widths=w))
  assert all(np.array_equal(x["labels"], y["labels"]) for x, y in zip(a, b))
  assert not all(np.array_equal(x["labels"], y["labels"]) for x, y in zip(a, c))
  assert not all(np.array_equal(x["labels"], y["labels"]) for x, y in zip(a, plain))
  resumed = list(log.batches(64, seed=3, epoch=0, widths=w, start=4))
  assert len(resumed) == len(a) - 4
  assert all(np.array_equal(x["indices"], y["indices"]) for x, y in zip(a[4:], resumed))


def test_shuffle_stays_within_the_buffer(tmp_path):
  """A bounded buffer: the first batch only holds queries from the first window."""
  path = tmp_path / "q.tsv"
  with open(path, "w") as f:
    for i in range(600):
      f.write(f"query {i}\t{i // 100}\n")  # label = which block of 100 lines
  log = QueryLog(str(path), F, 6, buffer_size=100, read_chunk=100)
  first = next(iter(log.batches(50, seed=0, widths=log.widths(50))))
  assert set(first["labels"][:, 0].tolist()) == {0}


def test_to_xc_matches_streamed_rows(tmp_path):
  log = QueryLog(str(write_log(tmp_path / "q.tsv", 200)), F, 50, read_chunk=33)
  data = log.to_xc()
  assert data.X.shape == (200, F.num_features) and data.Y.shape == (200, 50)
  assert data.Y.nnz == log.label_counts().sum()


@pytest.mark.parametrize("line, match", [
    ("usb charger\t3,x\n", r"q.tsv:2: product ids '3,x' are not comma-separated integers"),
    ("usb charger\t50\n", r"q.tsv:2: product id 50 is outside \[0, 50\)"),
    ("usb charger 3\n", r"q.tsv:2: expected 'query<TAB>ids', found 1 tab-separated"),
    ("a\tb\tc\n", r"q.tsv:2: expected 'query<TAB>ids', found 3")])
def test_bad_lines_name_file_and_line(tmp_path, line, match):
  path = tmp_path / "q.tsv"
  path.write_text("fine query\t1\n" + line)
  with pytest.raises(QueryLogError, match=match):
    QueryLog(str(path), F, 50)


def test_too_long_query_fails_at_start_up_naming_file_and_line(tmp_path):
  path = tmp_path / "q.tsv"
  path.write_text("ok\t1\n" + "x" * 30 + "\t2\n")
  with pytest.raises(QueryLogError, match=r"q.tsv:2: query of 30 characters exceeds "
                     r"featurizer.max_chars=20"):
    QueryLog(str(path), TextFeaturizer(num_features=64, max_chars=20), 50)


def test_missing_and_empty_logs(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.tsv"):
    QueryLog(str(tmp_path / "nope.tsv"), F, 5)
  (tmp_path / "e.tsv").write_text("")
  with pytest.raises(QueryLogError, match="e.tsv: no queries"):
    QueryLog(str(tmp_path / "e.tsv"), F, 5)
  (tmp_path / "three.tsv").write_text("a\t1\nb\t2\nc\t3\n")  # 2% of 3 lines: none.
  with pytest.raises(QueryLogError, match=r"three.tsv: no queries in its validation part "
                     r"\(config.data.validation_fraction=0.02 .*change validation_fraction"):
    QueryLog(str(tmp_path / "three.tsv"), F, 5, holdout=(0.02, 0), part="validation")


def test_wide_batch_gets_a_wider_width_not_truncated(tmp_path):
  path = tmp_path / "q.tsv"
  with open(path, "w") as f:
    for i in range(300):
      f.write(("a" if i < 299 else " ".join(f"w{j}" for j in range(400))) + f"\t{i % 5}\n")
  log = QueryLog(str(path), F, 5, buffer_size=1000)
  widths = batching.Widths(nnz=64, labels=1)
  batches = list(log.batches(100, shuffle=False, widths=widths))
  last = batches[-1]
  assert last["indices"].size > 64
  assert (last["values"] != 0).sum() == sum(int(x.nnz) for x in [log.to_xc().X[200:]])


def test_count_lines_counts_a_last_line_without_newline(tmp_path):
  from mach_jax.data import count_lines
  (tmp_path / "a.tsv").write_text("0\ta\n1\tb\n")
  (tmp_path / "b.tsv").write_text("0\ta\n1\tb")
  (tmp_path / "c.tsv").write_text("")
  assert [count_lines(str(tmp_path / f)) for f in ("a.tsv", "b.tsv", "c.tsv")] == [2, 2, 0]


@pytest.mark.parametrize("cache_mb, featurized_once", [(64, True), (1e-3, False), (0, False)])
def test_featurized_cache_serves_later_epochs_with_the_same_batches(tmp_path, monkeypatch,
                                                                    cache_mb, featurized_once):
  """A log that fits in cache_mb is featurized by its first complete pass only; one that
  does not (1 KB here) or a cache of 0 featurizes every epoch. The batches are the same."""
  path = str(write_log(tmp_path / "q.tsv", 700))
  plain = QueryLog(path, F, 50, buffer_size=200, read_chunk=50)
  cached = QueryLog(path, F, 50, buffer_size=200, read_chunk=50, cache_mb=cache_mb)
  w = plain.widths(64)
  calls = []
  transform = TextFeaturizer.transform
  monkeypatch.setattr(TextFeaturizer, "transform",
                      lambda self, *a, **k: calls.append(1) or transform(self, *a, **k))
  for epoch in range(3):
    before = len(calls)
    got = list(cached.batches(64, seed=3, epoch=epoch, widths=w))
    featurized = len(calls) - before
    if epoch and featurized_once:
      assert featurized == 0
    else:
      assert featurized == 14  # 700 lines in chunks of 50.
    want = list(plain.batches(64, seed=3, epoch=epoch, widths=w))
    for x, y in zip(got, want, strict=True):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_windows_read_their_rows_from_the_cache_file_and_a_full_cache_mid_pass(tmp_path,
                                                                            monkeypatch):
  """With the cache on, a shuffle window holds its chunks as rows in the file (the first
  pass's as soon as written), not as featurized arrays. A cache that fills mid-pass keeps
  the chunks already in it readable for their window, the rest come from memory, and the
  next pass featurizes again. The batches are the same as without a cache."""
  from mach_jax.data import query_log
  from mach_jax.data.spill import ChunkRows
  path = str(write_log(tmp_path / "q.tsv", 700))
  plain = QueryLog(path, F, 50, buffer_size=200, read_chunk=50)
  X, Y = next(plain.chunks())
  chunk_mb = sum(getattr(m, f).nbytes for m in (X, Y) for f in ("data", "indices", "indptr"))
  w = plain.widths(64)
  kinds = []
  stack = query_log.RowStack
  monkeypatch.setattr(query_log, "RowStack", lambda parts: kinds.append(
      [type(p) for p in parts]) or stack(parts))
  for cache_mb, from_file in ((64, [14, 14]), (3.5 * chunk_mb / 2**20, [3, 0])):
    log = QueryLog(path, F, 50, buffer_size=200, read_chunk=50, cache_mb=cache_mb,
                   cache_dir=str(tmp_path))
    for epoch, want_file in enumerate(from_file):
      kinds.clear()
      got = list(log.batches(64, seed=3, epoch=epoch, widths=w))
      assert sum(k == ChunkRows for ks in kinds for k in ks) == 2 * want_file
      want = list(plain.batches(64, seed=3, epoch=epoch, widths=w))
      for x, y in zip(got, want, strict=True):
        for k in x:
          np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert (log._cached is not None) == (from_file[1] > 0)


def test_a_one_pass_run_keeps_no_cache(tmp_path):
  """load_splits(passes=1) streams the log without caching it: nothing would read the cache,
  which would otherwise hold the whole featurized log (1.8 GB for 10M queries)."""
  from mach_jax.config import default_config
  from mach_jax.data import load_splits
  c = default_config().data
  c.name, c.num_labels, c.cache_mb = "queries", 50, 64
  c.train = str(write_log(tmp_path / "train.tsv", 300))
  c.test = str(write_log(tmp_path / "test.tsv", 20))
  for passes, want in ((1, 0), (2, 64 * 2**20)):
    train = load_splits(c, passes, cache_dir=str(tmp_path)).train
    assert train.cache_bytes == want
    for _ in train.chunks():
      pass
    assert (train._cached is not None) == bool(want)
    if want:  # In the directory given, unlinked: nothing is left behind.
      where = os.readlink(f"/proc/self/fd/{train._cached._file.fileno()}")
      assert where.startswith(str(tmp_path)) and where.endswith("(deleted)"), where


def test_a_pass_stopped_early_leaves_no_cache(tmp_path):
  """Only a complete pass fills the cache; a partial one (the first window read for the
  batch shapes, an epoch resumed) closes its file and the next pass featurizes again."""
  log = QueryLog(str(write_log(tmp_path / "q.tsv", 300)), F, 50, read_chunk=50, cache_mb=64,
                 cache_dir=str(tmp_path))
  chunks = log.chunks()
  next(chunks)
  chunks.close()
  assert log._cached is None
  assert sum(X.shape[0] for X, _ in log.chunks()) == 300 and len(log._cached) == 6


def test_a_streamed_test_log_is_featurized_only_when_asked(tmp_path):
  """stream_test: the test log is checked at start-up (a bad line fails before training)
  but featurized by in_memory, to the same matrices as when it is held from the start."""
  from mach_jax.config import default_config
  from mach_jax.data import in_memory, load_splits
  c = default_config().data
  c.name, c.num_labels, c.validation_fraction = "queries", 50, 0.1
  c.train = str(write_log(tmp_path / "train.tsv", 300))
  c.test = str(write_log(tmp_path / "test.tsv", 40))
  streamed = load_splits(c, stream_test=True).test
  assert isinstance(streamed, QueryLog) and streamed.num_points == 40
  held = load_splits(c).test
  assert (in_memory(streamed).X != held.X).nnz == 0 and (in_memory(held).Y != held.Y).nnz == 0
  with open(c.test, "a") as f:
    f.write("a query without ids\n")
  with pytest.raises(QueryLogError, match="test.tsv:41"):
    load_splits(c, stream_test=True)


def test_a_row_stack_gives_the_rows_of_its_parts_stacked():
  rng = np.random.default_rng(0)
  parts = [sp.random(n, 30, density=0.2, format="csr", random_state=i, dtype=np.float32)
           for i, n in enumerate((5, 1, 17, 9))]
  whole = sp.vstack(parts, format="csr")
  stack = RowStack(parts)
  assert stack.shape == whole.shape
  for rows in (rng.permutation(32)[:13], np.arange(6, 18), [31, 0, 5], [4], []):
    got, want = stack[rows], whole[np.asarray(rows, np.int64)]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.toarray(), want.toarray())


def test_a_window_is_not_copied_into_one_matrix(tmp_path, monkeypatch):
  """Batches are cut from the window's chunks: nothing stacks more rows than a batch's
  (a stacked window would hold the window's featurized queries twice), and the batches are
  those of the stacked window."""
  path = str(write_log(tmp_path / "q.tsv", 700))
  log = QueryLog(path, F, 50, buffer_size=300, read_chunk=50)
  w = log.widths(64)
  stacked_rows = []
  vstack = sp.vstack
  monkeypatch.setattr(sp, "vstack", lambda blocks, **k: stacked_rows.append(
      sum(b.shape[0] for b in blocks)) or vstack(blocks, **k))
  got = list(log.batches(64, seed=3, epoch=1, widths=w))
  monkeypatch.setattr(sp, "vstack", vstack)
  assert stacked_rows and max(stacked_rows) <= 64
  # The same batches from the stacked windows: rebuild them by the order's definition.
  whole = log.to_xc()
  X, Y = whole.X, whole.Y
  n, start, carry, want = X.shape[0], 0, np.zeros(0, np.int64), []
  for index, stop in enumerate((300, 600, 700)):
    window = np.concatenate([carry, np.arange(start, stop)])
    order = window[np.random.default_rng([3, 1, index]).permutation(window.size)]
    full = window.size if stop == n else window.size // 64 * 64
    want += [order[i:i + 64] for i in range(0, full, 64)]
    carry, start = order[full:], stop
  assert len(got) == len(want)
  for b, rows in zip(got, want):
    ref = batching.make_batch(X, Y, rows, 64, w)
    for k in b:
      np.testing.assert_array_equal(b[k], ref[k], err_msg=k)


def test_the_next_window_is_read_after_the_last_one_is_let_go(tmp_path, monkeypatch):
  """While a window's chunks are read and featurized, the previous window is no longer
  held (one window's featurized queries in memory, not two)."""
  import gc
  import weakref

  from mach_jax.data import query_log

  windows = []

  class Tracked(RowStack):
    def __init__(self, parts):
      super().__init__(parts)
      windows.append(weakref.ref(self))

  monkeypatch.setattr(query_log, "RowStack", Tracked)
  log = QueryLog(str(write_log(tmp_path / "q.tsv", 700)), F, 50, buffer_size=200,
                 read_chunk=50)
  widths = log.widths(64)
  passes = log._pass
  alive_at_reads = []

  def watched(rows_from_file):
    for chunk in passes(rows_from_file):
      gc.collect()
      alive_at_reads.append(sum(w() is not None for w in windows))
      yield chunk
  monkeypatch.setattr(log, "_pass", watched)
  assert len(list(log.batches(64, seed=0, epoch=0, widths=widths))) == 11
  # Every one of the 14 chunks was read through the watched pass, with no window alive.
  assert len(windows) >= 3 * 2 and len(alive_at_reads) == 14 and max(alive_at_reads) == 0


def test_the_batches_bench_makes_every_epochs_batches(tmp_path):
  """experiments.bench.batches: ceil(N / b) batches an epoch, each epoch timed, the
  resident set sampled (at least what it was after loading)."""
  from experiments.bench import batches
  from mach_jax.config import default_config
  c = default_config()
  c.data.name, c.data.num_labels = "queries", 50
  c.data.train = str(write_log(tmp_path / "train.tsv", 700))
  c.data.test = str(write_log(tmp_path / "test.tsv", 20))
  c.data.featurizer.num_features = 1 << 12
  c.train.batch_size, c.train.num_epochs = 64, 2
  res = batches.measure(c, 2)
  assert [e["batches"] for e in res["epochs"]] == [11, 11]
  assert all(e["seconds"] > 0 for e in res["epochs"])
  assert res["peak_rss_mb"] >= res["start_rss_mb"] > 0
