"""A smaller text set for quick validation probes: every n-th item of a query-log set.

    python -m experiments.datasets.subset --src runs/data/debian --out runs/data/debian_q4 \
        --every 4

Reads SRC/items.tsv (``id<TAB>title``, ids 0..K-1 in order), SRC/train.tsv and SRC/test.tsv
(``query<TAB>ids``) with the library's strict readers, keeps the items whose id is a multiple
of ``--every`` (renumbered 0, 1, ... in order), and writes the three files to OUT with only
those items' ids: a line keeps its other kept ids, and a line left with none is dropped
(their counts go to OUT/stats.json). The items keep their training text, so a probe on the
subset sees the same number of training points per item as the full set, with 1/n of the
items and of the steps. Used for the text config's probes in docs/text_ablations.md; figures quoted
from a subset say so.
"""

from __future__ import annotations

import argparse
import json
import os

from mach_jax.data import query_log
from mach_jax.data.lines import iter_text_lines


def subset(src: str, out: str, every: int) -> dict:
  """Write the subset of ``src`` to ``out``; returns the counts written to stats.json."""
  if every < 1:
    raise ValueError(f"--every={every}: expected a positive integer")
  os.makedirs(out, exist_ok=True)
  items_path = os.path.join(src, "items.tsv")
  new_id, items = {}, []
  for lineno, line in iter_text_lines(items_path, query_log.QueryLogError):
    head, _, title = line.partition("\t")
    if not head.isdigit() or int(head) != lineno - 1:
      raise query_log.QueryLogError(f"{items_path}:{lineno}: expected the id {lineno - 1} "
                                    f"first, found {head[:40]!r}")
    if int(head) % every == 0:
      new_id[int(head)] = len(new_id)
      items.append(f"{new_id[int(head)]}\t{title}")
  with open(os.path.join(out, "items.tsv"), "w") as f:
    f.write("".join(line + "\n" for line in items))
  stats = {"every": every, "items": len(items), "items_in_source": lineno}
  for part in ("train", "test"):
    path, kept, dropped = os.path.join(src, f"{part}.tsv"), 0, 0
    with open(os.path.join(out, f"{part}.tsv"), "w") as f:
      for queries, labels, _ in query_log.read_lines(path, stats["items_in_source"], 4096):
        for query, ids in zip(queries, labels):
          ids = [new_id[i] for i in ids if i in new_id]
          if ids:
            f.write(f"{query}\t{','.join(map(str, ids))}\n")
            kept += 1
          else:
            dropped += 1
    stats[part] = {"lines": kept, "dropped_lines": dropped}
  with open(os.path.join(out, "stats.json"), "w") as f:
    json.dump(stats, f, indent=2)
  return stats


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="folder with items.tsv, train.tsv, test.tsv")
  parser.add_argument("--out", required=True)
  parser.add_argument("--every", type=int, default=4, help="keep the items with id %% n == 0")
  args = parser.parse_args()
  print(json.dumps(subset(args.src, args.out, args.every)))


if __name__ == "__main__":
  main()
