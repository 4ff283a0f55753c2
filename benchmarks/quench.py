"""Quench cost from the starts the conformer search quenches from.

A search quench starts where an excursion in torsion space left the molecule:
groups turned about bonds, bond lengths and angles those of a minimum. From
such starts (one torsion of the ANI-1x minimum turned by 1-3 rad, a second by a
normal 0.5 rad; the same starts for every optimizer), this script counts the
force calls each optimizer needs to max |F| < --fmax, not counting the
evaluation of the start itself (the search has it from the excursion):

* ECD quench (batched L-BFGS of ``ecd_chem.dynamics``) with no preconditioner,
  with Exp, and with the bonded model Hessian (the search's default for molecules);
* ASE's BFGS, LBFGS and FIRE;
* geomeTRIC (TRIC internal coordinates), when it is installed.

    python benchmarks/quench.py methoxyethanol butanol n-hexane --starts 20

Single-threaded; ANI-1x in float64.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ase.io import read  # noqa: E402
from ase.optimize import BFGS, FIRE, LBFGS  # noqa: E402

from ecd_chem import dynamics as ecd  # noqa: E402
from ecd_chem.calculators import ANICalculator, ANIModel, Evaluator  # noqa: E402
from ecd_chem.structures import TorsionSpace, bond_graph  # noqa: E402

HARTREE, BOHR = 27.211386, 0.529177


def turned_starts(atoms, evaluate, count, seed):
    """(count, N, 3) geometries: the minimum of ``atoms`` with torsions turned."""
    x = torch.tensor(atoms.positions)[None]
    qp = ecd.QuenchParams(memory=30, precon=True)
    home = ecd.quench_until(ecd.quench_init(x, *evaluate(x), qp), evaluate, 0.01, 500, qp)[0].x
    space = TorsionSpace(bond_graph(atoms), atoms.numbers)
    rng = np.random.default_rng(seed)
    turns = np.zeros((count, space.count, 1))
    for turn in turns:
        turn[rng.integers(space.count), 0] = rng.uniform(1.0, 3.0) * rng.choice([-1, 1])
        turn[rng.integers(space.count), 0] += rng.normal(0, 0.5)
    return space.move(home.expand(count, -1, -1).clone(), torch.tensor(turns))


def ecd_quench(start, evaluate, precon, fmax):
    qp = ecd.QuenchParams(memory=30, precon=precon)
    f, g = evaluate(start[None])
    _, converged, used = ecd.quench_until(ecd.quench_init(start[None], f, g, qp), evaluate,
                                          fmax, 1000, qp)
    return int(used[0]) if bool(converged[0]) else None


def ase_quench(optimizer, atoms, start, calc, fmax):
    probe = atoms.copy()
    probe.positions = start.numpy()
    probe.calc = calc
    opt = optimizer(probe, logfile=None)
    return opt.nsteps if opt.run(fmax=fmax, steps=1000) else None


def geometric_quench(atoms, start, evaluate, fmax):
    import logging

    import geometric.engine
    import geometric.molecule
    import geometric.optimize
    calls = [0]

    class Engine(geometric.engine.Engine):
        def calc_new(self, coords, dirname):
            f, g = evaluate(torch.tensor(coords.reshape(-1, 3) * BOHR)[None])
            calls[0] += 1
            return {"energy": float(f[0]) / HARTREE, "gradient": (g[0].numpy() * BOHR / HARTREE).ravel()}

    mol = geometric.molecule.Molecule()
    mol.elem, mol.xyzs = list(atoms.get_chemical_symbols()), [start.numpy().copy()]
    with tempfile.TemporaryDirectory() as folder:
        logging.disable(logging.CRITICAL)      # geomeTRIC logs every step to stdout
        try:        # gmax alone decides, as for the others (geomeTRIC's units: Ha, bohr)
            geometric.optimize.run_optimizer(
                customengine=Engine(mol), check=1, input=os.path.join(folder, "q"), maxiter=1000,
                convergence_gmax=fmax / HARTREE * BOHR, convergence_grms=1, convergence_drms=1,
                convergence_dmax=1, convergence_energy=1)
        except Exception:
            return None
        finally:
            logging.disable(logging.NOTSET)
    return calls[0] - 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("molecules", nargs="+", help="names of molecules/*.xyz")
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--fmax", type=float, default=0.05, help="eV/A (the search's quench_fmax)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    calc = ANICalculator("ani1x", dtype=torch.float64)
    model = ANIModel("ani1x", dtype=torch.float64)
    try:
        import geometric  # noqa: F401
        have_geometric = True
    except ImportError:
        have_geometric = False
    for name in args.molecules:
        atoms = read(ROOT / "molecules" / f"{name}.xyz")
        evaluate = Evaluator(model, atoms)
        starts = turned_starts(atoms, evaluate, args.starts, args.seed)
        methods = {
            "ECD quench, no precon": lambda s: ecd_quench(s, evaluate, False, args.fmax),
            "ECD quench, Exp": lambda s: ecd_quench(s, evaluate, True, args.fmax),
            "ECD quench, bonded": lambda s: ecd_quench(
                s, evaluate, ecd.BondedPreconditioner(bond_graph(atoms)), args.fmax),
            "ASE BFGS": lambda s: ase_quench(BFGS, atoms, s, calc, args.fmax),
            "ASE LBFGS": lambda s: ase_quench(LBFGS, atoms, s, calc, args.fmax),
            "ASE FIRE": lambda s: ase_quench(FIRE, atoms, s, calc, args.fmax),
        }
        if have_geometric:
            methods["geomeTRIC (TRIC)"] = lambda s: geometric_quench(atoms, s, evaluate, args.fmax)
        print(f"{name}: {args.starts} starts, force calls to max|F| < {args.fmax} eV/A")
        for label, quench in methods.items():
            calls = [quench(s) for s in starts]
            done = [c for c in calls if c is not None]
            print(f"  {label:24s} mean {statistics.mean(done):6.1f}  median "
                  f"{statistics.median(done):5.1f}  max {max(done):4d}  failed {len(calls) - len(done)}",
                  flush=True)


if __name__ == "__main__":
    main()
