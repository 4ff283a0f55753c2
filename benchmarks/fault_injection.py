"""Fault injection: kill a running `ecd-chem conformers` search at random
moments, resume it each time with the same command, and count what was lost.

Each round starts the command, waits a random time, sends SIGKILL (or, one
time in four, SIGTERM), then checks every file the search keeps:

* the checkpoint (search.json) and, when present, the ensemble (minima.xyz) and
  the summary (summary.json) must parse and hold only finite numbers -- a file
  that does not is *corrupted*;
* every minimum in the checkpoint after a kill must still be in the checkpoint
  at the end (same index, same or lower energy) -- one that is not is *lost*.

After the kills the search runs to completion. Prints kills, resumes, minima
lost (target 0) and files corrupted (target 0).

    python benchmarks/fault_injection.py [--kills 20] [--seed 0] [--atoms 26]
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

from ase.io import read, write

from ecd_chem.potentials import random_cluster


def command(workdir, budget, cluster):
    return [sys.executable, "-m", "ecd_chem.cli", "conformers", str(cluster), "--calc", "lj",
            "-o", "minima.xyz", "--json", "summary.json", "--checkpoint", "search.json",
            "--max-calls", str(budget), "--walkers", "8", "--seed", "3", "--quiet"]


def finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite(v) for v in value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    return True


def check_files(workdir: pathlib.Path) -> tuple[list[str], list | None]:
    """(names of corrupted files, checkpointed minima as (energy, found_at))."""
    corrupted, minima = [], None
    path = workdir / "search.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            minima = [(m["energy"], m["found_at"]) for m in data["minima"]]
            if not all(finite(m["positions"]) and math.isfinite(m["energy"])
                       for m in data["minima"]):
                corrupted.append("search.json (non-finite minimum)")
        except (ValueError, KeyError) as err:
            corrupted.append(f"search.json ({err})")
    path = workdir / "summary.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if not finite(data["conformers"]):
                corrupted.append("summary.json (non-finite)")
        except (ValueError, KeyError) as err:
            corrupted.append(f"summary.json ({err})")
    path = workdir / "minima.xyz"
    if path.exists():
        try:
            frames = read(path, ":")
            if not frames or any(not math.isfinite(f.positions.sum()) for f in frames):
                corrupted.append("minima.xyz (empty or non-finite)")
        except Exception as err:
            corrupted.append(f"minima.xyz ({type(err).__name__})")
    return corrupted, minima


def lost(before, after) -> int:
    """Minima of ``before`` absent from ``after`` (the archive only appends;
    a known minimum may only get lower)."""
    if not before:
        return 0
    if after is None:
        return len(before)
    return sum(1 for k, (energy, _) in enumerate(before)
               if k >= len(after) or after[k][0] > energy + 1e-9)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--atoms", type=int, default=26, help="LJ cluster size")
    ap.add_argument("--budget", type=int, default=200_000)
    ap.add_argument("--min-wait", type=float, default=1.0, help="s after start")
    ap.add_argument("--max-wait", type=float, default=6.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ecd-faults-"))
    cluster = workdir / "cluster.xyz"
    write(cluster, random_cluster(args.atoms, seed=args.seed))
    cmd = command(workdir, args.budget, cluster)

    kills = resumes = lost_total = 0
    corrupted: list[str] = []
    snapshots = []                 # checkpointed minima after each kill
    t0 = time.time()
    for k in range(args.kills):
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if k:
            resumes += 1
        time.sleep(rng.uniform(args.min_wait, args.max_wait))
        if proc.poll() is not None:
            print(f"round {k + 1}: the search ended before the kill "
                  f"(status {proc.returncode}); raise --budget", file=sys.stderr)
            break
        sig = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
        proc.send_signal(sig)
        status = proc.wait()
        kills += 1
        bad, minima = check_files(workdir)
        corrupted += [f"kill {kills}: {b}" for b in bad]
        lost_now = sum(lost(s, minima) for s in snapshots[-1:])
        lost_total += lost_now
        snapshots.append(minima or [])
        print(f"kill {kills:2d}: {signal.Signals(sig).name:7s} status {status:4d}  "
              f"minima checkpointed {len(minima or []):4d}  lost {lost_now}  "
              f"corrupted {len(bad)}", flush=True)

    final = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    resumes += 1
    bad, minima = check_files(workdir)
    corrupted += [f"final: {b}" for b in bad]
    lost_final = sum(lost(s, minima) for s in snapshots)
    summary = json.loads((workdir / "summary.json").read_text()) if final.returncode == 0 else {}
    print()
    print(f"LJ{args.atoms}, budget {args.budget} force calls, 8 walkers, checkpoint every 25 steps "
          "at most (writes kept under ~5% of the wall time)")
    print(f"final run: status {final.returncode}, force calls {summary.get('force_calls')}, "
          f"lowest {summary.get('conformers', [{}])[0].get('energy_eV')}")
    print(f"kills {kills}  resumes {resumes}  minima lost {lost_total + lost_final}  "
          f"files corrupted {len(corrupted)}  ({time.time() - t0:.0f} s; files in {workdir})")
    for line in corrupted:
        print("  corrupted:", line)
    ok = final.returncode == 0 and lost_total + lost_final == 0 and not corrupted
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
