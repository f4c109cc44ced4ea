"""The paper's memory arithmetic, from the library's own parameter count.

    python -m experiments.bench.arithmetic                  # the Amazon setting of the paper
    python -m experiments.bench.arithmetic --K 1000000 --B 4096 --R 4 --H 64 --D 262144

Medini et al. (NeurIPS 2019) train on 70M Amazon queries over K = 49.46M products with
B = 10,000 buckets and R = 32 repetitions, and say a plain softmax layer for that set "can
easily reach well beyond 100 billion parameters (> 400 GB memory)"; Medini puts it at "about
2,000 parameters per product" (Ars Technica, 2019), i.e. a last hidden layer of about 2,000
units. This prints the output layers (weights and biases) of both, and whole models when
``--D`` (the hashed input dimension) is given, with ``mach_jax.model.num_params_formula``:
the same function the training loop checks its parameter count against.
"""

from __future__ import annotations

import argparse

from mach_jax.model import num_params_formula


def human(params: int) -> str:
  """'98.97B params (369 GiB)': the count and its float32 bytes."""
  count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
  gib = 4 * params / 2**30
  size = f"{gib:,.1f} GiB" if gib >= 1 else f"{4 * params / 2**20:,.0f} MiB"
  return f"{count} ({size})"


def table(K: int, B: int, R: int, hiddens: list[int], D: int = 0) -> str:
  rows = ["| H | full softmax output layer | MACH output layers (R x B) | ratio "
          + ("| full softmax model | MACH model | ratio " if D else "") + "|",
          "|---|---|---|---" + ("|---|---|---" if D else "") + "|"]
  for H in hiddens:
    full = num_params_formula(H, (), K, R=1)
    mach = num_params_formula(H, (), B, R=R)
    row = f"| {H:,} | {human(full)} | {human(mach)} | {full / mach:,.0f}x "
    if D:
      full_m = num_params_formula(D, (H,), K, R=1)
      mach_m = num_params_formula(D, (H,), B, R=R)
      row += f"| {human(full_m)} | {human(mach_m)} | {full_m / mach_m:.2f}x "
    rows.append(row + "|")
  return "\n".join(rows)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--K", type=int, default=49_460_000, help="classes (products)")
  p.add_argument("--B", type=int, default=10_000, help="buckets per repetition")
  p.add_argument("--R", type=int, default=32, help="repetitions")
  p.add_argument("--H", default="1024,2000,4096", help="last hidden widths, comma-separated")
  p.add_argument("--D", type=int, default=0, help="hashed input dimension (0: output layers "
                 "only)")
  a = p.parse_args(argv)
  for name in ("K", "B", "R"):
    if getattr(a, name) < 1:
      raise SystemExit(f"--{name}={getattr(a, name)}: must be >= 1")
  print(f"K = {a.K:,} classes, B = {a.B:,} buckets, R = {a.R} repetitions (float32)")
  print(table(a.K, a.B, a.R, [int(h) for h in a.H.split(",")], a.D))


if __name__ == "__main__":
  main()
