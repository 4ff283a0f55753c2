"""Local optimization: ECDOpt against ASE's FIRE, BFGS and LBFGS, same starts, one run.

1. ANI-1x on every ASE g2 molecule made only of H, C, N, O with >= 6 atoms,
   rattled 0.15 A with seeds 0 and 1: force calls to max|F| < 0.05 and < 0.01 eV/A
   (one run to 0.01; the first step under 0.05 is recorded on the way; no
   optimizer's path depends on fmax), failures (no 0.01 within 1000 calls) and
   the final energy minus BFGS's from the same start.
2. The optbench protocol: random LJ38 clusters, stop when the L2 norm of the
   whole force vector is < 0.01; mean force calls (published L-BFGS: OPTIM 176,
   pele 179, SciPy 222), with SciPy's L-BFGS-B run here on the same starts.

Force calls are counted at the calculator, so nothing is missed.

    python benchmarks/local.py [--lj38 100] [--seeds 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from ase.collections import g2
from ase.optimize import BFGS, FIRE, LBFGS

from ecd_chem import ECDOpt
from ecd_chem.calculators import ANICalculator
from ecd_chem.potentials import LennardJonesModel, random_cluster

OPTIMIZERS = {"ECDOpt": ECDOpt, "FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}
MAX_CALLS = 1000


class Counting:
    """Wraps a calculator's calculate() to count energy+force evaluations."""

    def __init__(self, calc):
        self.calc, self.calls = calc, 0
        inner = calc.calculate

        def calculate(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        calc.calculate = calculate


def g2_hcno(min_atoms=6):
    names = []
    for name in g2.names:
        atoms = g2[name]
        if len(atoms) >= min_atoms and set(atoms.get_chemical_symbols()) <= set("HCNO"):
            names.append(name)
    return sorted(names)


def make_optimizer(cls, atoms, seed):
    return cls(atoms, logfile=None, seed=seed) if cls is ECDOpt else cls(atoms, logfile=None)


def relax(cls, atoms, seed, stop, max_calls=MAX_CALLS):
    """Run until stop(forces) is True; returns (calls to each threshold, energy, extra)."""
    counter = Counting(atoms.calc)
    opt = make_optimizer(cls, atoms, seed)
    hits = {}
    # fmax far below any stop threshold: the loop below decides when to stop
    for _ in opt.irun(fmax=1e-12, steps=max_calls):
        forces = atoms.get_forces()
        for key, done in stop(forces).items():
            if done and key not in hits:
                hits[key] = counter.calls
        if len(hits) == len(stop(forces)) or counter.calls >= max_calls:
            break
    extra = {}
    if isinstance(opt, ECDOpt):
        extra = {"ecd_calls": opt.ecd_calls, "quench_calls": opt.quench_calls}
    return hits, atoms.get_potential_energy(), extra


def molecules_benchmark(seeds):
    calc = ANICalculator("ani1x", device="cpu")
    names = g2_hcno()
    stop = lambda f: {0.05: np.linalg.norm(f, axis=1).max() < 0.05,      # noqa: E731
                      0.01: np.linalg.norm(f, axis=1).max() < 0.01}
    rows = []
    for name in names:
        for seed in range(seeds):
            row = {"molecule": name, "seed": seed}
            for label, cls in OPTIMIZERS.items():
                atoms = g2[name].copy()
                atoms.rattle(0.15, seed=seed)
                atoms.calc = calc
                calc.reset()
                hits, energy, extra = relax(cls, atoms, seed, stop)
                row[label] = {"calls_0.05": hits.get(0.05), "calls_0.01": hits.get(0.01),
                              "energy": energy, **extra}
            rows.append(row)
    return names, rows


def summarize_molecules(rows):
    table = {}
    for label in OPTIMIZERS:
        out = {}
        for key in ("calls_0.05", "calls_0.01"):
            values = [r[label][key] for r in rows if r[label][key] is not None]
            out[key] = {"median": statistics.median(values) if values else None,
                        "max": max(values) if values else None,
                        "failures": sum(r[label][key] is None for r in rows)}
        de = [r[label]["energy"] - r["BFGS"]["energy"] for r in rows]
        out["dE_vs_BFGS_max_meV"] = 1000 * max(de)
        out["lower_than_BFGS_by_1meV"] = sum(d < -1e-3 for d in de)
        out["higher_than_BFGS_by_1meV"] = sum(d > 1e-3 for d in de)
        if label == "ECDOpt":
            ecd = sum(r[label]["ecd_calls"] for r in rows)
            quench = sum(r[label]["quench_calls"] for r in rows)
            out["ecd_share"] = ecd / (ecd + quench)
        table[label] = out
    return table


def scipy_lbfgs(atoms, tol=0.01, max_calls=10000):
    """SciPy L-BFGS-B on the same start until |F|_2 < tol; returns calls."""
    from scipy.optimize import minimize
    import torch
    model = LennardJonesModel()
    calls = [0]
    done = [None]

    def fun(x):
        calls[0] += 1
        e, f = model.evaluate(atoms, torch.tensor(x.reshape(1, -1, 3)))
        g = -f[0].numpy().ravel()
        if done[0] is None and np.linalg.norm(g) < tol:
            done[0] = calls[0]
        return float(e[0]), g

    minimize(fun, atoms.positions.ravel(), jac=True, method="L-BFGS-B",
             options={"gtol": 1e-12, "ftol": 0, "maxfun": max_calls, "maxiter": max_calls})
    return done[0]


def lj38_benchmark(count):
    stop = lambda f: {"l2": np.linalg.norm(f) < 0.01}                   # noqa: E731
    results = {label: [] for label in [*OPTIMIZERS, "scipy L-BFGS-B"]}
    energies = {label: [] for label in OPTIMIZERS}
    for seed in range(count):
        for label, cls in OPTIMIZERS.items():
            atoms = random_cluster(38, seed=seed)
            hits, energy, _ = relax(cls, atoms, seed, stop, max_calls=20000)
            results[label].append(hits.get("l2"))
            energies[label].append(energy)
        results["scipy L-BFGS-B"].append(scipy_lbfgs(random_cluster(38, seed=seed)))
    summary = {}
    for label, calls in results.items():
        ok = [c for c in calls if c is not None]
        summary[label] = {"mean": statistics.mean(ok) if ok else None,
                          "median": statistics.median(ok) if ok else None,
                          "failures": len(calls) - len(ok)}
        if label in energies:
            summary[label]["mean_energy"] = statistics.mean(energies[label])
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lj38", type=int, default=100)
    parser.add_argument("--skip-molecules", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    t0 = time.time()
    report = {}
    if not args.skip_molecules:
        names, rows = molecules_benchmark(args.seeds)
        report["molecules"] = {"names": names, "starts": len(rows),
                               "summary": summarize_molecules(rows), "rows": rows}
        print(f"ANI-1x g2 HCNO >= 6 atoms: {len(names)} molecules x {args.seeds} seeds")
        print(f"{'optimizer':10s} {'med@0.05':>9s} {'max@0.05':>9s} {'med@0.01':>9s} "
              f"{'max@0.01':>9s} {'fail':>5s} {'dE max meV':>11s} {'lower':>6s} {'higher':>6s}")
        for label, s in report["molecules"]["summary"].items():
            a, b = s["calls_0.05"], s["calls_0.01"]
            print(f"{label:10s} {a['median']:9.1f} {a['max']:9d} {b['median']:9.1f} {b['max']:9d} "
                  f"{b['failures']:5d} {s['dE_vs_BFGS_max_meV']:11.3f} "
                  f"{s['lower_than_BFGS_by_1meV']:6d} {s['higher_than_BFGS_by_1meV']:6d}")
        share = report["molecules"]["summary"]["ECDOpt"]["ecd_share"]
        print(f"ECDOpt force calls in ECD steps: {100 * share:.0f}%, in the quench: "
              f"{100 * (1 - share):.0f}%")
    if args.lj38:
        report["lj38"] = lj38_benchmark(args.lj38)
        print(f"\nLJ38 optbench, {args.lj38} random clusters, |F|_2 < 0.01 "
              "(published L-BFGS: OPTIM 176, pele 179, SciPy 222)")
        for label, s in report["lj38"].items():
            print(f"{label:15s} mean {s['mean']:8.1f}  median {s['median']:7.1f}  "
                  f"failures {s['failures']}")
    print(f"\nwall time {time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
