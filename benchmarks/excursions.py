"""What one ECD excursion + quench does from a fixed home, without the walker
policy around it.

Full searches are chaotic: with 20 seeds a mean moves by 15-30%, and a change
of the excursion (kick, dE, length) also changes which homes the walker visits.
This script holds the home fixed. For each home (the minimum the bundled
geometry quenches into, then every distinct conformer up to --emax above the
lowest), the walker runs --cycles excursions, each followed by its quench, and
always returns to the same home with the same dE. It reports the force calls per
cycle, the share of quenches landing in the reference lowest conformer (within
--hit kcal/mol at the quench's loose fmax) and their ratio, the expected calls
per find from that home.

    python benchmarks/excursions.py methoxyethanol --cycles 150 --homes input
    python benchmarks/excursions.py butanol --emax 2 --set kick_torsions=1 excursion_energy=0.4

Single-threaded; ANI-1x; the reference is benchmarks/results/global_molecules.json.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ase.io import read  # noqa: E402

from ecd_chem import ConformerSearch, ECDOpt  # noqa: E402
from ecd_chem.calculators import ANICalculator  # noqa: E402
from ecd_chem.structures import KCAL_PER_MOL, bond_graph, equivalence_classes, rmsd  # noqa: E402


class FixedHome(ConformerSearch):
    """A search whose walker goes back to the same home, with the same dE,
    after every quench, and records where each quench landed (eV)."""

    def set_home(self, positions, energy, gradient):
        self.fixed = (torch.tensor(positions), float(energy), torch.tensor(gradient))
        self.landings: list[float] = []

    def _finish_quench(self, w):
        self.landings.append(float(self.quench.f[w]))
        self.home_x[w], self.home_f[w], self.home_g[w] = self.fixed
        self.home_index[w] = -1          # dE stays the walker's own, never adapted


parse_setting = importlib.import_module("global").parse_setting   # benchmarks/global.py


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("molecule", help="name of a molecules/*.xyz with a stored reference")
    ap.add_argument("--cycles", type=int, default=100, help="excursions per home")
    ap.add_argument("--emax", type=float, default=3.5, help="homes up to this, kcal/mol")
    ap.add_argument("--hit", type=float, default=0.1,
                    help="a landing within this of the reference counts, kcal/mol")
    ap.add_argument("--homes", choices=["input", "all"], default="all")
    ap.add_argument("--survey", type=int, default=3000, help="calls per survey search (3 seeds)")
    ap.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="ConformerSearch keywords")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    reference = json.loads((ROOT / "benchmarks/results/global_molecules.json").read_text())
    best = reference["molecules"][args.molecule]["reference_eV"]
    calc = ANICalculator("ani1x")
    atoms = read(ROOT / "molecules" / f"{args.molecule}.xyz")
    kwargs = dict(parse_setting(item) for item in args.set or [])

    start = atoms.copy()
    start.calc = calc
    ECDOpt(start, logfile=None).run(fmax=0.01)
    homes = [("input", start.positions.copy())]
    if args.homes == "all":
        classes = equivalence_classes(atoms.numbers, bond_graph(atoms))
        found = []
        for seed in range(3):
            survey = ConformerSearch(atoms, calc, walkers=1, max_force_calls=args.survey,
                                     seed=seed, merge_top_rotamers=False)
            found += [(c.info["energy"], c.positions.copy()) for c in survey.run().conformers]
        distinct = []
        for energy, x in sorted(found, key=lambda t: t[0]):
            if (energy - best) / KCAL_PER_MOL > args.emax:
                break
            if not any(abs(energy - e) < 0.05 * KCAL_PER_MOL and rmsd(x, y, classes) < 0.125
                       for e, y in distinct):
                distinct.append((energy, x))
        homes += [(f"{(e - best) / KCAL_PER_MOL:.2f}", x) for e, x in distinct]

    print(f"{args.molecule}, {args.cycles} cycles per home, settings {kwargs or 'default'}")
    print(f"{'home kcal/mol':>14} {'calls/cycle':>11} {'P(lowest)':>9} {'calls/find':>10}  landings")
    for label, x in homes:
        home = atoms.copy()
        home.positions = x
        home.calc = calc
        energy, gradient = home.get_potential_energy(), -home.get_forces()
        if label == "input":
            label = f"input {(energy - best) / KCAL_PER_MOL:.2f}"
        search = FixedHome(home, calc, walkers=1, max_force_calls=40 * (args.cycles + 1),
                           seed=1, **kwargs)
        search.set_home(x, energy, gradient)
        search.run()
        landed = np.array(search.landings[1:]) - best      # the first is the home itself
        spent = search.ecd_calls + search.quench_calls
        per_cycle = spent / max(1, len(landed))
        share = float(np.mean(landed / KCAL_PER_MOL <= args.hit)) if len(landed) else 0.0
        top = collections.Counter(np.round(landed / KCAL_PER_MOL, 1).tolist()).most_common(5)
        per_find = per_cycle / share if share else float("inf")
        print(f"{label:>14} {per_cycle:11.1f} {share:9.2f} {per_find:10.0f}  {top}", flush=True)


if __name__ == "__main__":
    main()
