"""Randomized kills: SIGKILL a real training run, rerun the same command, compare.

    python -m experiments.bench.faults --trials 30 --out runs/faults
    python -m experiments.bench.faults --refit --trials 40 --out runs/faults_refit

One uninterrupted run of a small synthetic config (3,000 training points, 3 epochs at 3e-2,
a 5% validation slice with early stopping on P@1, checkpoints every 10 steps, an
evaluation per epoch, the final model export) is the reference. Each trial starts the same
command in a fresh workdir and kills it with SIGKILL at a moment chosen by the trial's mode,
in turn:

  * ``random``: a time drawn uniformly over the reference run's wall time;
  * ``save``: as soon as a checkpoint's temporary folder appears (orbax is writing) while
    an earlier checkpoint exists;
  * ``eval``: just after an epoch's last log line (the evaluation that follows is running);
  * ``export``: as soon as the model folder's temporary copy appears (``model.partial``);
  * ``damage``: as ``eval``, and then 4 KiB in the middle of the largest file of the newest
    checkpoint (its array data) are inverted, as a bad sector or a broken copy might: the
    rerun must pass over it for the previous checkpoint (its files' record,
    ``checkpoint.check_files``).
  * ``damage_best``: as ``damage`` after the last epoch, but the checkpoint damaged is the
    best evaluation's (the one the newest checkpoint names), which the run goes back to at
    its end: the rerun must move it and the newer ones aside and train from the checkpoint
    before it again (``checkpoint.restore_kept``; ``experiments.train`` reruns once).

With ``--processes N`` the run is N processes on this machine (2 devices each; the 'rep'
axis spans all of them, 4 repetitions one a device at N = 2), as on N hosts, and a kill
takes one of them (drawn; ``export``: process 0, the one that writes the model folder),
or, in mode ``all``, every one at a random moment (a power cut). The survivors must exit
by themselves once the dead process's heartbeat is missed (the run sets
``distributed.heartbeat_timeout_seconds`` to ``HEARTBEAT_S``); the time they take is
reported, and a survivor still running after ``--survivor_wait`` seconds fails the trial.
Then every process is started again.

With ``--background`` every checkpoint is written in the background while training goes
on (``checkpoint.background=always``), as on an accelerator: a kill can land while orbax
writes one (its files' record is written after every process's files, before orbax
renames the folder into place).

With ``--refit`` the run is the default text config's protocol on the same data (8 epochs
at most, chosen on the validation slice with one decay and early stopping, then the refit
on every training point; ``REFIT_FLAGS``), with two more modes: ``decay`` kills the run
just after its decay has gone back to the best epoch, before the next checkpoint, and
``refit_export`` while the refit (not the selection) writes its model folder.

Right after the kill the workdir is inspected: a ``model`` folder, if there is one, must
load. Then the same command is rerun to completion, and its exported parameters, test
metrics and metrics.jsonl records (less the throughput) are compared bit for bit with the
reference. Writes OUT/faults.json and prints a
table; exits non-zero when a trial differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = [
    "--config", "experiments/configs/synthetic.py",
    "--config.data.synthetic.num_train=3000", "--config.data.synthetic.num_test=300",
    "--config.data.synthetic.num_classes=400", "--config.data.synthetic.num_features=1000",
    "--config.model.R=4", "--config.model.B=32", "--config.model.hidden=(64,)",
    "--config.train.batch_size=64", "--config.train.num_epochs=3",
    "--config.optimizer.learning_rate=0.03",  # (Its best is the second epoch's, not the last.)
    "--config.train.log_every_steps=5", "--config.train.progress_bar=False",
    "--config.checkpoint.every_steps=10", "--config.checkpoint.best_metric=P@1",
    "--config.data.validation_fraction=0.05", "--config.eval.every_epochs=1",
    "--config.mesh=(('data', 1), ('rep', 1))", "--config.eval.estimators=('mean',)",
]
# --refit: the default text config's protocol (docs/text.md) on the same data: the run
# chooses its epochs on the validation slice, going back to the best epoch at a tenth of
# the rate after an epoch without a better P@1 (once) and stopping after two more, then
# trains afresh on every training point for the epochs it chose (WORKDIR/select, then
# WORKDIR).
REFIT_FLAGS = ["--config.train.refit=True", "--config.train.num_epochs=8",
               "--config.train.decay_patience=1", "--config.train.max_decays=1",
               "--config.train.early_stopping_patience=2",
               # At 5e-2 the kept epoch comes after the decay: the refit replays both rates.
               "--config.optimizer.learning_rate=0.05"]
MODES = ("random", "save", "eval", "export", "damage", "damage_best")
HEARTBEAT_S = 10
REFIT_MODES = (*MODES, "decay", "refit_export")
METRICS = ("P@1", "P@3", "P@5", "nDCG@5", "steps")


def launch(workdir: str, flags: list[str], processes: int = 1,
           devices: int | None = None) -> list[subprocess.Popen]:
  """Start the run: one process, or ``processes`` of one multi-process run talking over a
  free localhost port, each with ``devices`` simulated CPU devices (default: 1 for one
  process, 2 each for several)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  devices = devices or (2 if processes > 1 else 1)
  if devices > 1:
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
  extra = [[]]
  if processes > 1:
    flags = [f for f in flags if not f.startswith("--config.mesh=")]  # (Set below.)
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    extra = [["--config.mesh=(('data', 1), ('rep', -1))", "--config.distributed.enabled=True",
              f"--config.distributed.coordinator_address=127.0.0.1:{port}",
              f"--config.distributed.num_processes={processes}",
              f"--config.distributed.process_id={i}",
              f"--config.distributed.heartbeat_timeout_seconds={HEARTBEAT_S}"]
             for i in range(processes)]
  return [subprocess.Popen([sys.executable, "-m", "experiments.train", *flags, *more,
                            "--workdir", workdir], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for more in extra]


def finish(procs: list[subprocess.Popen]) -> tuple[int, str]:
  """Wait for every process; the worst return code, and process 0's output."""
  logs = [p.communicate()[0] for p in procs]
  return max(abs(p.returncode) for p in procs), logs[0]


def params(workdir: str) -> dict[str, np.ndarray]:
  import jax

  from mach_jax import bundle
  _, _, tree = bundle.load(os.path.join(workdir, "model"))
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def active(workdir: str) -> str:
  """The folder of the run going on: a refit's selection (``select``) until it has ended,
  else ``workdir`` itself."""
  select = os.path.join(workdir, "select")
  done = os.path.exists(os.path.join(select, "results.json"))
  return select if os.path.isdir(select) and not done else workdir


def logs(workdir: str) -> list[list[dict]]:
  """The run's metrics.jsonl records (and its selection's, after a refit), less the
  throughput, which no two runs share."""
  out = []
  for sub in ("select", ""):
    path = os.path.join(workdir, sub, "metrics.jsonl")
    if os.path.exists(path):
      out.append([{k: v for k, v in json.loads(line).items() if k != "examples_per_second"}
                  for line in open(path)])
  return out


def _happening(workdir: str, mode: str, epoch_end: int) -> bool:
  """Whether the moment ``mode`` waits for has come (in ``workdir``, a run's folder)."""
  if mode in ("save", "any save"):  # 'save': one after the first, so a resume has a choice.
    d = os.path.join(workdir, "checkpoints")
    names = os.listdir(d) if os.path.isdir(d) else []
    return any("tmp" in n for n in names) and (mode == "any save"
                                               or any(n.isdigit() for n in names))
  if mode in ("export", "refit_export"):  # ('refit_export': given the refit's folder.)
    return os.path.isdir(os.path.join(workdir, "model.partial"))
  if mode in ("eval", "damage", "damage_best"):
    path = os.path.join(workdir, "metrics.jsonl")
    return os.path.exists(path) and f'"step": {epoch_end}, ' in open(path).read()
  if mode == "decay":  # Just after a decay went back to the best state, before a save.
    path = os.path.join(workdir, "metrics.jsonl")
    return os.path.exists(path) and '"decay": ' in open(path).read()
  raise ValueError(mode)


def trial(workdir: str, mode: str, at: float, epoch_end: int, flags: list[str],
          processes: int = 1, victim: int = 0, survivor_wait: float = 120) -> dict:
  """Kill one run of ``mode`` (``at``: seconds, for 'random' and 'all'; ``victim``: which
  process of a multi-process run), then rerun it to the end."""
  procs, t0 = launch(workdir, flags, processes), time.time()
  victims = procs if mode == "all" else [procs[0 if mode == "export" else victim]]
  while victims[0].poll() is None:
    run = workdir if mode == "refit_export" else active(workdir)
    if ((time.time() - t0 >= at) if mode in ("random", "all")
        else _happening(run, mode, epoch_end)):
      break
    time.sleep(0.001)
  killed_at = time.time() - t0
  finished = victims[0].poll() is not None
  for p in victims:
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
  t_kill, survivors = time.time(), [p for p in procs if p not in victims]
  while any(p.poll() is None for p in survivors) and time.time() - t_kill < survivor_wait:
    time.sleep(0.05)
  hung = sum(p.poll() is None for p in survivors)
  survivors_exit_s = time.time() - t_kill if survivors else None
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
    p.communicate()
  run = active(workdir)
  phase = ("finished before the kill" if finished else
           "export" if os.path.isdir(os.path.join(run, "model.partial")) else
           "checkpoint save" if _happening(run, "any save", epoch_end) else mode)
  if run != workdir and not finished:
    phase += " (selection)"
  damaged = (damage_checkpoint(run, best=mode == "damage_best")
             if mode.startswith("damage") and not finished else None)
  model_ok = None
  if os.path.isdir(os.path.join(workdir, "model")):
    try:
      params(workdir)
      model_ok = True
    except Exception as e:  # noqa: BLE001 - reported, not raised.
      model_ok = f"{type(e).__name__}: {e}"
  rerun_rc, log = finish(launch(workdir, flags, processes))
  return {"mode": mode, "killed_at_s": round(killed_at, 2), "phase": phase,
          "victim": "all" if mode == "all" else procs.index(victims[0]),
          "survivors_exit_s": survivors_exit_s and round(survivors_exit_s, 1),
          "survivors_hung": hung, "model_after_kill": model_ok, "rerun_rc": rerun_rc,
          "resumed": "resumed from" in log, "damaged": damaged,
          "passed_over": damaged is not None and any(
              f"checkpoints/{damaged.split('checkpoints/')[1].split('/')[0]}{after}" in log
              for after in (" could not be restored", ", the state this run goes back to, "
                                                      "could not be read")),
          "log_tail": log[-800:] if rerun_rc else ""}


def compare(workdir: str, reference: dict, ref_params: dict, ref_logs: list) -> dict:
  """Whether a finished run's test metrics, exported parameters and logs are the
  reference run's (its ``results.json``, ``params`` and ``logs``), bit for bit."""
  got, theirs = json.load(open(os.path.join(workdir, "results.json"))), params(workdir)
  return {"metrics_equal": all(got[k] == reference[k] for k in METRICS),
          "params_equal": theirs.keys() == ref_params.keys() and all(
              np.array_equal(theirs[k], ref_params[k]) for k in ref_params),
          "log_equal": logs(workdir) == ref_logs}


def damage_checkpoint(workdir: str, best: bool = False) -> str | None:
  """Invert 4 KiB (every bit) in the middle of the largest file of the newest finished
  checkpoint, or (``best``) of the best evaluation's that it names; the file's path (None
  when there is no such checkpoint)."""
  d = os.path.join(workdir, "checkpoints")
  steps = sorted((int(n) for n in os.listdir(d) if n.isdigit()), reverse=True) if (
      os.path.isdir(d)) else []
  if best and steps:
    meta = json.load(open(os.path.join(d, str(steps[0]), "meta", "metadata")))
    steps = [s for s in steps if s == (meta.get("best") or {}).get("step")]
  if not steps:
    return None
  folder = os.path.join(d, str(steps[0]))
  path = max((os.path.join(p, f) for p, _, fs in os.walk(folder) for f in fs),
             key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  mid = len(data) // 2
  data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
  with open(path, "wb") as f:
    f.write(bytes(data))
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=30)  # Five of each mode.
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="runs/faults")
  parser.add_argument("--modes", default="",
                      help=f"comma-separated, of {REFIT_MODES} ('decay' with --refit); the "
                      "trials take them in turn (default: all)")
  parser.add_argument("--refit", action="store_true",
                      help="the text config's protocol: a selection with a decay, then a refit")
  parser.add_argument("--processes", type=int, default=1,
                      help="one run of this many processes (2 devices each), one killed")
  parser.add_argument("--background", action="store_true",
                      help="checkpoints written in the background, as on an accelerator")
  parser.add_argument("--survivor_wait", type=float, default=120,
                      help="seconds the other processes have to exit after one is killed")
  args = parser.parse_args()
  flags = (FLAGS + REFIT_FLAGS * args.refit
           + ["--config.checkpoint.background=always"] * args.background)
  known = (REFIT_MODES if args.refit else MODES) + ("all",) * (args.processes > 1)
  if os.path.isdir(args.out):  # A workdir left by an earlier campaign would be resumed.
    shutil.rmtree(args.out)
  os.makedirs(args.out)
  ref_dir = os.path.join(args.out, "reference")
  t0 = time.time()
  rc, log = finish(launch(ref_dir, flags, args.processes))
  if rc:
    raise SystemExit(f"the reference run failed:\n{log[-3000:]}")
  wall = time.time() - t0
  reference = json.load(open(os.path.join(ref_dir, "results.json")))
  selection = json.load(open(os.path.join(ref_dir, "select" if args.refit else "",
                                          "results.json")))
  ref_params, ref_logs = params(ref_dir), logs(ref_dir)
  epoch_end = -(-selection["num_train"] // 64)
  print(f"reference: {wall:.1f} s, P@1 {reference['P@1']:.4f}, {reference['steps']} steps",
        flush=True)
  rng = random.Random(args.seed)
  modes = args.modes.split(",") if args.modes else list(known)
  if set(modes) - set(known):
    raise SystemExit(f"--modes={args.modes}: expected some of {known}")
  rows = []
  for i in range(args.trials):
    mode = modes[i % len(modes)]
    workdir = os.path.join(args.out, f"trial_{i:02d}")
    at, end = rng.uniform(0, wall), epoch_end * (1 + rng.randrange(3))
    if mode == "damage_best":  # The (selection) run's last epoch's: its best is the one
      end = selection["steps"]  # the run ends with.
    victim = rng.randrange(args.processes) if args.processes > 1 else 0
    row = trial(workdir, mode, at, end, flags, args.processes, victim, args.survivor_wait)
    # A damaged checkpoint the rerun must read: the newest (it resumes from it), or the
    # best evaluation's where the run ends with it.
    step = row["damaged"] and int(row["damaged"].split("checkpoints/")[1].split("/")[0])
    needed = row["damaged"] is not None and (
        mode == "damage" or step == (selection.get("selected") or {}).get("step"))
    row["read_again"] = needed
    if row["rerun_rc"] == 0:
      row.update(compare(workdir, reference, ref_params, ref_logs))
    row["identical"] = bool(row["rerun_rc"] == 0 and row.get("metrics_equal")
                            and not row["survivors_hung"]
                            and row.get("params_equal") and row.get("log_equal")
                            and row["model_after_kill"] in (None, True)
                            and (row["passed_over"] or not needed))
    rows.append(row)
    print(f"trial {i:2d} {mode:>6}: killed at {row['killed_at_s']:6.2f} s ({row['phase']}), "
          f"model folder after the kill: {row['model_after_kill']}, resumed "
          f"{row['resumed']}, identical {row['identical']}"
          + (f", process {row['victim']} killed, the others exited after "
             f"{row['survivors_exit_s']} s" if args.processes > 1 and mode != "all" else "")
          + (f", damaged checkpoint {step} (read again: {needed}) reported {row['passed_over']}"
             if row["damaged"] else ", nothing to damage" if mode.startswith("damage")
             else ""), flush=True)
  same = sum(r["identical"] for r in rows)
  summary = {"trials": len(rows), "identical": same, "reference_wall_s": wall,
             "reference": {k: reference[k] for k in METRICS}, "rows": rows,
             "processes": args.processes, "background": args.background,
             "command": "python -m experiments.train " + " ".join(flags)}
  with open(os.path.join(args.out, "faults.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"{same}/{len(rows)} killed runs ended bit-identical to the uninterrupted one")
  if same != len(rows):
    sys.exit(1)


if __name__ == "__main__":
  main()
