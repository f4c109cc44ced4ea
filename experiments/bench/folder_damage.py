"""Damage each file of a model folder in turn and load it: is every damage refused by name?

    python -m experiments.bench.folder_damage --model runs/peers_xc_1207/bibtex/mach/run/model \
        --out runs/folder_damage
    # --unchecked: the same without the files' record check (what loading did before it)
    # --damages= : only time bundle.load with and without the check

The folder is first exported again by this code (so that its ``model.json`` records its
files: ``mach_jax.file_digests``). Then, for every file and every damage (one byte flipped
at its middle, the file cut to half, the file removed), a copy is damaged and loaded with
``bundle.load``, and the outcome is one of:

* ``refused by name``: an error whose message names the damaged file;
* ``refused``: an error that does not name it (type and message kept);
* ``loaded, same``: the damage did not reach the weights (orbax's bookkeeping files);
* ``loaded, DIFFERENT``: other weights, no error: the silent failure this guards against.

Before the damages, ``bundle.load`` of the undamaged folder is timed with and without the
check, alternated (``--rounds``; the file cache warm after a first load), and so is the
record of its files by each digest (``file_digests.ALGORITHMS``). Writes
OUT/folder_damage.json and prints the table; exits non-zero when a damage loaded different
weights.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import time

import jax
import numpy as np

DAMAGES = ("flip", "cut", "remove")


def damage(path: str, how: str) -> bool:
  """Damage the file ``path`` in place; False when there is nothing to damage that way."""
  data = bytearray(open(path, "rb").read())
  if how == "remove":
    os.remove(path)
    return True
  if not data:
    return False
  if how == "flip":
    data[len(data) // 2] ^= 0x10
  else:
    data = data[: len(data) // 2]
  with open(path, "wb") as f:
    f.write(bytes(data))
  return True


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="a model folder")
  p.add_argument("--out", required=True)
  p.add_argument("--unchecked", action="store_true",
                 help="skip the files' record check (how loading was before it)")
  p.add_argument("--damages", default=",".join(DAMAGES),
                 help=f"comma-separated, of {DAMAGES}; empty: timing only")
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args(argv)
  from mach_jax import bundle, file_digests
  from mach_jax.hashing import HashSpec
  damages = [d for d in args.damages.split(",") if d]
  if set(damages) - set(DAMAGES):
    raise SystemExit(f"--damages={args.damages}: expected some of {DAMAGES}")
  check = file_digests.check
  os.makedirs(args.out, exist_ok=True)
  folder, copy = os.path.join(args.out, "model"), os.path.join(args.out, "damaged")
  info, config, params = bundle.load(args.model)
  bundle.export(folder, params, HashSpec.from_dict(info["hash_spec"]), config,
                info["num_features"], bundle.load_featurizer(args.model, info))
  want = [np.asarray(x) for x in jax.tree.leaves(bundle.load(folder)[2])]
  timing = {"checked": [], "unchecked": []}
  for _ in range(args.rounds):
    for name, fn in (("checked", check), ("unchecked", lambda *a: None)):
      file_digests.check = fn
      t = time.perf_counter()
      bundle.load(folder)
      timing[name].append(time.perf_counter() - t)
  for _ in range(args.rounds):
    for name in file_digests.ALGORITHMS:
      t = time.perf_counter()
      file_digests.record(folder, algorithm=name)
      timing.setdefault(f"record {name}", []).append(time.perf_counter() - t)
  print(f"{bundle.folder_bytes(folder) / 1e6:.0f} MB; seconds of bundle.load checked / "
        "unchecked, and of recording its files: "
        + "; ".join(f"{k} " + ", ".join(f"{v:.3f}" for v in vs) for k, vs in timing.items()))
  file_digests.check = (lambda *a: None) if args.unchecked else check
  rows = []
  names = sorted(os.path.relpath(os.path.join(d, f), folder)
                 for d, _, files in os.walk(folder) for f in files)
  for rel in names:
    for how in damages:
      shutil.rmtree(copy, ignore_errors=True)
      shutil.copytree(folder, copy)
      target = os.path.join(copy, rel)
      if not damage(target, how):
        continue
      try:
        got = [np.asarray(x) for x in jax.tree.leaves(bundle.load(copy)[2])]
        same = len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
        outcome, message = ("loaded, same" if same else "loaded, DIFFERENT"), ""
      except Exception as e:  # noqa: BLE001 -- every failure is an outcome to report.
        message = f"{type(e).__name__}: {str(e)[:200]}"
        outcome = "refused by name" if target in str(e) else "refused"
      rows.append({"file": rel, "damage": how, "outcome": outcome, "error": message})
      print(f"{rel:58s} {how:7s} {outcome:18s} {message[:90]}", flush=True)
  shutil.rmtree(copy, ignore_errors=True)
  counts = collections.Counter(r["outcome"] for r in rows)
  summary = {"model": args.model, "checked": not args.unchecked, "files": len(names),
             "damages": len(rows), "outcomes": dict(counts), "load_seconds": timing,
             "folder_bytes": bundle.folder_bytes(folder), "rows": rows}
  with open(os.path.join(args.out, "folder_damage.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"\n{len(names)} files, {len(rows)} damages: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
  if counts["loaded, DIFFERENT"]:
    raise SystemExit(f"{counts['loaded, DIFFERENT']} damages loaded other weights silently")


if __name__ == "__main__":
  main()
