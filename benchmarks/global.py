"""Global minima and lowest conformers: ConformerSearch against the peers, one run.

1. LJ clusters (13, 19, 26, 38; Cambridge Cluster Database energies): success
   rate and mean force calls to first reach the global minimum (within 0.001)
   for ConformerSearch, scipy.optimize.basinhopping (L-BFGS-B quench to gtol 1e-2,
   T = 0.8, stepsize 0.4, steps from the current minimum), ASE BasinHopping (LBFGS,
   kT 0.8, dr 0.35, steps from unquenched positions) and ASE MinimaHopping (T0
   1000 K); `--peers scipy ase` (or ase-bh, ase-mh for one of the two); same random
   starts (uniform sphere, liquid density) and budgets for all. `--peers random`
   adds a reference that is not a peer: random restarts, fresh random clusters
   each quenched by the search's own cluster quench, which shows what the ECD
   excursions add over new starts. Every method is
   counted alike: the force calls spent when an evaluated geometry first lies
   within 0.001 of the global minimum (ConformerSearch's calls when its quench
   archived it, the count before session 24, are kept as "calls_archived").
2. Flexible molecules in molecules/ with ANI-1x: the reference lowest conformer is
   the best of N RDKit ETKDG conformers each relaxed to fmax 0.01 (batched
   L-BFGS); the cost of ETKDG + L-BFGS is the expected force calls until the
   first conformer that relaxes to within 0.1 kcal/mol of it (random order).
   ConformerSearch reports whether and when it first finds that minimum.
   methylcyclohexane_axial starts from the higher (axial) chair: its lowest
   conformer lies past a ring flip, which ETKDG samples directly.

    python benchmarks/global.py [--lj 13 19 26 38] [--seeds 5] [--etkdg 1000]
                                [--molecule-seeds 5] [--json f]
    python benchmarks/global.py --lj --molecules propanal --reference old.json \
                                --set energy_growth=1.2      # a variant, old references
    python benchmarks/global.py --lj --molecule-walkers 1 --molecule-seeds 10 \
        --molecule-first-seed 10 --reference old.json --set home_policy=lower  # fresh seeds
    python benchmarks/global.py --lj 19 --seeds 16 --walkers 4 --peers --molecules \
                                --set kick=isotropic excursion_energy=15   # a cluster variant
    python benchmarks/global.py --merge a.json b.json --json ab.json   # join seed splits; print
                                # the table, ratios to the best peer with 95% bootstrap intervals
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import pathlib
import statistics
import time

import numpy as np
import torch

from ecd_chem import ConformerSearch
from ecd_chem import dynamics as ecd
from ecd_chem.calculators import ANICalculator, ANIModel, Evaluator
from ecd_chem.potentials import LennardJones, LennardJonesModel, random_cluster
from ecd_chem.structures import KCAL_PER_MOL

HERE = pathlib.Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "lj_global_minima.csv"
FALLBACK = {13: -44.326801, 19: -72.659782, 26: -108.315616, 38: -173.928427}
REACHED = 1e-3          # a geometry this close in energy to the global minimum has reached it
BUDGET = {13: 20_000, 19: 50_000, 26: 100_000, 38: 200_000}
MOLECULES = ["n-hexane", "1,2-ethanediol", "alanine_dipeptide", "butanol", "methoxyethanol",
             "propanal", "methylcyclohexane_axial"]


def lj_targets():
    if SHARED.exists():
        rows = [r for r in csv.reader(line for line in SHARED.open() if not line.startswith("#"))][1:]
        return {int(n): float(e) for n, e in rows}
    return FALLBACK


# The peers' local optimizers stop about where the search's own cluster quench
# does (largest atomic force 0.01-0.03 eps/sigma): scipy's gtol bounds each
# gradient component, ASE's fmax each atom's force (the 1e-3 used before is
# measured against it in EXPERIMENTS.md, session 32).
PEER_FMAX = 1e-2


class Reached(Exception):
    pass


class Watch(LennardJones):
    """LJ calculator that counts evaluations and stops a peer at the target or budget."""

    def __init__(self, target, budget):
        super().__init__()
        self.target, self.budget, self.calls, self.hit = target, budget, 0, None

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.hit is None and self.results["energy"] <= self.target + REACHED:
            self.hit = self.calls
            raise Reached
        if self.calls >= self.budget:
            raise Reached


def run_scipy(n, seed, target, budget):
    from scipy.optimize import basinhopping
    model, calls, hit = LennardJonesModel(), [0], [None]
    atoms = random_cluster(n, seed=seed)

    def fun(x):
        calls[0] += 1
        e, f = model.evaluate(atoms, torch.tensor(x.reshape(1, -1, 3)))
        if hit[0] is None and float(e[0]) <= target + REACHED:
            hit[0] = calls[0]
            raise Reached
        if calls[0] >= budget:
            raise Reached
        return float(e[0]), -f[0].numpy().ravel()

    try:
        basinhopping(fun, atoms.positions.ravel(), niter=10 ** 9, T=0.8, stepsize=0.4,
                     minimizer_kwargs={"method": "L-BFGS-B", "jac": True,
                                       "options": {"gtol": PEER_FMAX}}, seed=seed)
    except Reached:
        pass
    return hit[0]


def run_ase(kind, n, seed, target, budget):
    from ase.optimize import LBFGS
    from ase.optimize.basin import BasinHopping
    from ase.optimize.minimahopping import MinimaHopping
    atoms = random_cluster(n, seed=seed)
    atoms.calc = Watch(target, budget)
    np.random.seed(seed)              # both use NumPy's global generator
    try:
        if kind == "ASE BasinHopping":
            BasinHopping(atoms, temperature=0.8, dr=0.35, optimizer=LBFGS, fmax=PEER_FMAX,
                         logfile=None, trajectory=None, optimizer_logfile=None,
                         local_minima_trajectory=None).run(10 ** 9)
        else:
            import os
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                cwd = os.getcwd()
                os.chdir(tmp)
                try:
                    # T0 is in kelvin (ASE's default 1000 K: kT = 0.086 eps for eps = 1 eV)
                    MinimaHopping(atoms, T0=1000.0, Ediff0=2.0, fmax=PEER_FMAX, mdmin=2,
                                  logfile="hop.log", minima_traj="minima.traj")(
                                      totalsteps=10 ** 9)
                finally:
                    os.chdir(cwd)
    except Reached:
        pass
    return atoms.calc.hit


RANDOM = "random restarts"     # a reference row, not a peer: never the "best peer"


def run_random(n, seed, target, budget, batch=None):
    """Random search with ConformerSearch's own cluster quench (batched L-BFGS,
    Exp preconditioner, memory 30, 0.2 sigma step cap) to max force 0.03 (the
    search's screening threshold): the run's random cluster, then fresh ones
    (``random_cluster(n, seed=[seed, k])``), each quenched (at most 1000
    steps), until an evaluated
    energy lies within 0.001 of ``target``. Quenches run ``batch`` at a time
    (default: 8, doubling each round up to 256, so that a rare hit costs few
    Python steps); being independent, the calls are counted as if they had
    run one after another: all of every quench before the first that hits,
    plus that one's up to its hit. Returns those calls, or None past ``budget``."""
    evaluate = Evaluator(LennardJonesModel(), random_cluster(n, seed=seed))
    qp = ecd.QuenchParams(memory=30, max_step=0.2, precon=ecd.quench_preconditioner("exp"))
    fmax, spent, drawn = 0.03, 0, 0
    while spent < budget:
        size = batch or min(256, 8 * 2 ** (drawn // 8).bit_length())
        x = torch.stack([torch.as_tensor(random_cluster(n, seed=[seed, k] if k else seed).positions)
                         for k in range(drawn, drawn + size)])
        drawn += size
        f, g = evaluate(x)
        calls = torch.ones(size, dtype=torch.long)
        hit_at = torch.where(f <= target + REACHED, calls, torch.zeros_like(calls))
        state = ecd.quench_init(x, f, g, qp)
        active = (ecd.max_force(g) >= fmax) & (hit_at == 0)
        while bool(active.any()):
            idx = torch.nonzero(active).flatten()
            stepped = ecd.quench_propose(state, qp)
            f, g = stepped.f.clone(), stepped.g.clone()
            f[idx], g[idx] = evaluate(stepped.x[idx])
            calls[idx] += 1
            state = ecd.where(active, ecd.quench_absorb(stepped, f, g), state)
            hit_at = torch.where(active & (f <= target + REACHED), calls, hit_at)
            active &= (ecd.max_force(state.g) >= fmax) & (hit_at == 0) & (state.steps < 1000)
        for used, hit in zip(calls.tolist(), hit_at.tolist()):
            if hit:
                return spent + hit if spent + hit <= budget else None
            spent += used
            if spent >= budget:
                return None
    return None


class WatchedModel(LennardJonesModel):
    """The batched LJ model, noting the force calls spent when an evaluated
    geometry first lies within 0.001 of ``target``: the peers' criterion, so
    every method is counted alike. A batch of W geometries counts W calls,
    all of them spent by the time the hit is seen."""

    def __init__(self, target):
        super().__init__()
        self.target, self.calls, self.hit = target, 0, None

    def evaluate(self, atoms, positions):
        energy, forces = super().evaluate(atoms, positions)
        self.calls += positions.shape[0]
        if self.hit is None and bool((energy <= self.target + REACHED).any()):
            self.hit = self.calls
        return energy, forces


def run_ecd(n, seed, target, budget, walkers, settings=None):
    """(calls at the first evaluation within 0.001 of the global minimum,
    calls when a quench first archived it, the SearchResult); None: not found."""
    model = WatchedModel(target)
    result = ConformerSearch(random_cluster(n, seed=seed), model, walkers=walkers,
                             max_force_calls=budget, seed=seed,
                             target_energy=target + REACHED, **(settings or {})).run()
    archived = [calls for calls, e in result.history if e <= target + REACHED]
    return model.hit, archived[0] if archived else None, result


def lj_benchmark(sizes, seeds, walker_counts, peers, seeds_large, settings=None, first_seed=0,
                 budget=None):
    targets = lj_targets()
    table = {}
    fixed_budget = budget
    for n in sizes:
        budget = fixed_budget or BUDGET.get(n, 100_000)
        row = {}
        shares = {}                     # label -> ECD-step share of each run's force calls
        archived = {}                   # label -> calls when a quench archived the minimum

        def search(s, w, n=n, budget=budget):
            hit, archived_at, result = run_ecd(n, s, targets[n], budget, w, settings)
            label = f"ConformerSearch W={w}"
            shares.setdefault(label, []).append(result.ecd_calls / result.force_calls)
            archived.setdefault(label, []).append(archived_at)
            return hit
        methods = {f"ConformerSearch W={w}": lambda s, w=w: search(s, w) for w in walker_counts}
        if "scipy" in peers:
            methods["scipy basinhopping"] = lambda s: run_scipy(n, s, targets[n], budget)
        if "ase" in peers or "ase-bh" in peers:
            methods["ASE BasinHopping"] = lambda s: run_ase("ASE BasinHopping", n, s, targets[n], budget)
        if "ase" in peers or "ase-mh" in peers:
            methods["ASE MinimaHopping"] = lambda s: run_ase("MH", n, s, targets[n], budget)
        if "random" in peers:
            methods[RANDOM] = lambda s: run_random(n, s, targets[n], budget)
        runs = seeds if n < 26 else seeds_large
        for label, method in methods.items():
            t0 = time.time()
            hits = [method(s) for s in range(first_seed, first_seed + runs)]
            ok = [h for h in hits if h is not None]
            # standard error of the mean: these means are heavy-tailed, so read
            # differences within about two of these as noise
            sem = statistics.stdev(ok) / math.sqrt(len(ok)) if len(ok) > 1 else None
            row[label] = {"success": len(ok), "runs": runs, "first_seed": first_seed, "budget": budget,
                          "mean_calls": statistics.mean(ok) if ok else None,
                          "sem_calls": sem, "calls": hits, "wall_s": time.time() - t0}
            if label in shares:
                row[label]["ecd_share"] = statistics.mean(shares[label])
                row[label]["calls_archived"] = archived[label]
            print(f"  LJ{n:<3d} {label:22s} {len(ok)}/{runs}  mean calls "
                  f"{statistics.mean(ok) if ok else float('nan'):10.0f} "
                  f"± {sem if sem is not None else float('nan'):.0f}", flush=True)
        table[f"LJ{n}"] = row
    return table


def etkdg_reference(atoms, smiles, count, seed=0, fmax=0.01, max_steps=500):
    """Best ANI-1x minimum of `count` ETKDG conformers (batched L-BFGS), and the
    L-BFGS force calls of each conformer with its final energy."""
    from rdkit import Chem
    from rdkit.Chem import AllChem
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed + 1            # RDKit's seed 0 embeds every conformer identically
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=count, params=params))
    order = [a.GetSymbol() for a in mol.GetAtoms()]
    assert order == atoms.get_chemical_symbols(), "molecule file and SMILES atom order differ"
    x = torch.tensor(np.stack([mol.GetConformer(i).GetPositions() for i in ids]))
    evaluate = Evaluator(ANIModel("ani1x"), atoms)
    energies, calls = [], []
    for chunk in torch.split(x, 256):
        f, g = evaluate(chunk)
        state = ecd.quench_init(chunk, f, g, ecd.QuenchParams(memory=100))
        state, _, steps = ecd.quench_until(state, evaluate, fmax, max_steps,
                                           ecd.QuenchParams(memory=100))
        used = steps + 1                        # the starting evaluation counts too
        energies += state.f.tolist()
        calls += used.tolist()
    return np.array(energies), np.array(calls)


def expected_calls_to_first_hit(energies, calls, best, tolerance):
    hit = energies <= best + tolerance
    h = hit.sum()
    return float(calls[~hit].sum() / (h + 1) + calls[hit].mean())


def molecule_benchmark(names, count, budget, walker_counts, seeds, reference=None, settings=None,
                       first_seed=0):
    """reference: a previous --json report whose ETKDG references are reused
    (skips the 1000-conformer relaxations; a molecule it lacks is computed);
    settings: extra ConformerSearch keyword arguments, for measuring a variant
    against the defaults."""
    from ase.io import read
    rows = {}
    calc = ANICalculator("ani1x")
    tol = 0.1 * KCAL_PER_MOL
    for name in names:
        atoms = read(HERE.parent / "molecules" / f"{name}.xyz")
        t0 = time.time()
        if reference and name in reference:
            rows[name] = {k: v for k, v in reference[name].items() if k != "search"}
        else:
            energies, calls = etkdg_reference(atoms, atoms.info["smiles"], count)
            rows[name] = {"atoms": len(atoms), "etkdg_conformers": int(len(energies)),
                          "reference_eV": float(energies.min()),
                          "etkdg_lbfgs_expected_calls": expected_calls_to_first_hit(
                              energies, calls, float(energies.min()), tol),
                          "etkdg_wall_s": time.time() - t0}
        best, baseline = rows[name]["reference_eV"], rows[name]["etkdg_lbfgs_expected_calls"]
        rows[name]["search"] = {}
        for w in walker_counts:
            runs = []
            for seed in range(first_seed, first_seed + seeds):
                # a quenched energy is never below its refined one, so stopping at the
                # reference + 0.1 kcal/mol never stops before the conformer is found
                result = ConformerSearch(atoms, calc, walkers=w, max_force_calls=budget, seed=seed,
                                         target_energy=best + tol, **(settings or {})).run()
                gap = (result.best.info["energy"] - best) / KCAL_PER_MOL
                runs.append({"seed": seed, "found": gap <= 0.1, "best_minus_reference_kcal": gap,
                             "calls": result.best.info["found_at_force_call"] if gap <= 0.1 else None,
                             "calls_total": result.force_calls,
                             "ecd_share": result.ecd_calls / result.force_calls})
            hits = [r["calls"] for r in runs if r["found"]]
            mean = statistics.mean(hits) if hits else None
            rows[name]["search"][w] = {"success": len(hits), "runs": seeds, "mean_calls": mean,
                                       "ratio": mean / baseline if hits else None, "detail": runs}
            print(f"  {name:18s} ETKDG+L-BFGS {baseline:7.0f} calls   ConformerSearch W={w:<2d} "
                  f"{len(hits)}/{seeds}, mean {mean or float('nan'):6.0f} calls to first find "
                  f"(ratio {mean / baseline if hits else float('nan'):.2f}; "
                  f"per seed {[r['calls'] for r in runs]})", flush=True)
    return rows


def parse_setting(item: str):
    """'key=value' -> (key, value), the value read as JSON or as a Python
    literal when it is one (1.2, true, False, null, None), else kept as text
    ('sphere'): a Python False must not pass as the truthy string 'False'."""
    key, _, text = item.partition("=")
    for read in (json.loads, ast.literal_eval):
        try:
            return key, read(text)
        except (ValueError, SyntaxError):
            pass
    return key, text


def per_success(calls, budget):
    """Force calls spent per run that found the minimum, each failed run (None)
    counted at its whole budget: the mean when every run succeeds; None when none does."""
    found = sum(c is not None for c in calls)
    return sum(budget if c is None else c for c in calls) / found if found else None


def ratio_interval(ours, peer, budget, draws=2000, seed=0, peer_budget=None):
    """Ratio of calls per success (``per_success``), ours over the peer's, with
    a 95% paired bootstrap interval: ``ours[i]`` and ``peer[i]`` are the runs
    from the same seed (None: not found, ``budget`` calls spent; the peer's
    ``peer_budget``, if it ran on another), and a draw resamples seeds.
    Returns (ratio, low, high); None where a side found nothing."""
    ours, peer = list(ours), list(peer)
    peer_budget = budget if peer_budget is None else peer_budget
    if len(ours) != len(peer):
        raise ValueError(f"paired runs differ in number: {len(ours)} and {len(peer)}")

    def ratio(rows):
        a = per_success([ours[i] for i in rows], budget)
        b = per_success([peer[i] for i in rows], peer_budget)
        return a / b if a is not None and b is not None else None
    whole = ratio(range(len(ours)))
    if whole is None:
        return None
    rng = np.random.default_rng(seed)
    drawn = [ratio(rng.integers(0, len(ours), len(ours))) for _ in range(draws)]
    drawn = [r for r in drawn if r is not None]
    return whole, float(np.percentile(drawn, 2.5)), float(np.percentile(drawn, 97.5))


def merge_reports(reports: list[dict]) -> dict:
    """One cluster report from several (``--first-seed`` splits of one table):
    each row's runs put in seed order, its means recomputed; the versions and
    machine of the first report that has them. A row whose seeds overlap or
    leave a gap, or whose parts ran on different budgets, raises ValueError."""
    merged = {"lj": {}}
    for report in reports:
        for key in ("versions", "machine"):
            if report.get(key) and key not in merged:
                merged[key] = report[key]
        for cluster, row in report["lj"].items():
            for label, r in row.items():
                merged["lj"].setdefault(cluster, {}).setdefault(label, []).append(r)
    for cluster, row in merged["lj"].items():
        for label, parts in row.items():
            parts.sort(key=lambda r: r.get("first_seed", 0))
            for before, after in zip(parts, parts[1:]):
                if before["budget"] != after["budget"]:
                    raise ValueError(f"{cluster} {label}: the reports' budgets differ "
                                     f"({before['budget']} and {after['budget']})")
                if before.get("first_seed", 0) + before["runs"] != after.get("first_seed", 0):
                    raise ValueError(f"{cluster} {label}: the reports' seeds overlap or leave a gap "
                                     f"at seed {before.get('first_seed', 0) + before['runs']}")
            calls = [c for r in parts for c in r["calls"]]
            ok = [c for c in calls if c is not None]
            r = {"success": len(ok), "runs": len(calls), "first_seed": parts[0].get("first_seed", 0),
                 "budget": parts[0]["budget"], "mean_calls": statistics.mean(ok) if ok else None,
                 "sem_calls": statistics.stdev(ok) / math.sqrt(len(ok)) if len(ok) > 1 else None,
                 "calls": calls,
                 # None where a part was run outside this script and its wall time not kept
                 "wall_s": (None if any(p.get("wall_s") is None for p in parts)
                            else sum(p["wall_s"] for p in parts))}
            if all("ecd_share" in p for p in parts):
                r["ecd_share"] = sum(p["ecd_share"] * p["runs"] for p in parts) / len(calls)
                r["calls_archived"] = [c for p in parts for c in p["calls_archived"]]
            row[label] = r
    return merged


def summary(report: dict) -> list[str]:
    """Lines of the cluster table: for every row success, mean ± standard
    error, median, and calls per success with each failed run's budget
    counted; for ConformerSearch rows, the ratio of calls per success to the
    peer with the fewest (random restarts, a reference, are not a peer) and to
    random restarts where they ran, with 95% paired bootstrap intervals, over
    the seeds both rows ran."""
    lines = []
    for cluster, row in report["lj"].items():
        peers = {label: r for label, r in row.items()
                 if not label.startswith("ConformerSearch") and label != RANDOM and r["success"]}
        best = min(peers, key=lambda label: per_success(peers[label]["calls"], peers[label]["budget"]),
                   default=None)
        for label, r in row.items():
            ok = [c for c in r["calls"] if c is not None]
            text = f"  {cluster:5s} {label:22s} {r['success']}/{r['runs']}"
            if ok:
                sem = f" ± {r['sem_calls']:.0f}" if r.get("sem_calls") else ""
                text += (f"  mean {statistics.mean(ok):.0f}{sem}, median {statistics.median(ok):.0f},"
                         f" per success {per_success(r['calls'], r['budget']):.0f}")
            if "ecd_share" in r:
                text += f", ECD share {r['ecd_share']:.2f}"
            if label.startswith("ConformerSearch") and ok:
                for other in (best, RANDOM):
                    if other in row and row[other]["success"]:
                        text += compared(r, row[other], other)
            lines.append(text)
    return lines


def compared(r: dict, other: dict, name: str) -> str:
    """'; 0.59x name (95% 0.53-0.66)': row r's calls per success over the
    other row's, paired by seed over the seeds both ran ('' where none)."""
    first, other_first = r.get("first_seed", 0), other.get("first_seed", 0)
    low_seed = max(first, other_first)
    high_seed = min(first + r["runs"], other_first + other["runs"])
    if high_seed <= low_seed:
        return ""
    ours = r["calls"][low_seed - first:high_seed - first]
    theirs = other["calls"][low_seed - other_first:high_seed - other_first]
    both = ratio_interval(ours, theirs, r["budget"], peer_budget=other["budget"])
    if both is None:
        return ""
    value, low, high = both
    whole = len(ours) == r["runs"] and len(theirs) == other["runs"]
    seeds = "" if whole else f", seeds {low_seed}-{high_seed - 1}"
    return f"; {value:.2f}x {name} (95% {low:.2f}-{high:.2f}{seeds})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lj", type=int, nargs="*", default=[13, 19, 26, 38],
                        help="cluster sizes; give none to skip")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seeds-large", type=int, default=2, help="runs for LJ26 and LJ38")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="cluster seeds run are first, first + 1, ... (split a long run)")
    parser.add_argument("--budget", type=int,
                        help="force calls per cluster run, every size and method (default: BUDGET by size)")
    parser.add_argument("--walkers", type=int, nargs="*", default=[4],
                        help="ConformerSearch walker counts for the clusters; give none to run only the peers")
    parser.add_argument("--peers", nargs="*", default=["scipy", "ase"],
                        choices=["scipy", "ase", "ase-bh", "ase-mh", "random"],
                        help="ase runs both ASE methods; random adds the random-restart "
                             "reference; give none to skip the peers")
    parser.add_argument("--molecules", nargs="*", default=MOLECULES)
    parser.add_argument("--etkdg", type=int, default=1000)
    parser.add_argument("--molecule-budget", type=int, default=5000)
    parser.add_argument("--molecule-walkers", type=int, nargs="+", default=[8],
                        help="walker counts to run (ConformerSearch's default is 8)")
    parser.add_argument("--molecule-seeds", type=int, default=5)
    parser.add_argument("--molecule-first-seed", type=int, default=0,
                        help="seeds run are first, first + 1, ... (fresh seeds for a variant)")
    parser.add_argument("--reference", help="reuse the ETKDG references of this --json report")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="ConformerSearch settings (clusters and molecules), e.g. kick_power=6")
    parser.add_argument("--json")
    parser.add_argument("--merge", nargs="+", metavar="REPORT",
                        help="no runs: merge these --json reports (seed splits of one table) "
                             "into --json, if given, and print the table with ratios")
    args = parser.parse_args()
    if args.merge:
        report = merge_reports([json.loads(pathlib.Path(f).read_text()) for f in args.merge])
        print("\n".join(summary(report)))
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
        return
    if args.budget is not None and args.budget < 2:
        parser.error(f"--budget must be at least 2 force calls, got {args.budget}")
    settings = dict(parse_setting(item) for item in args.set)
    reference = (json.loads(pathlib.Path(args.reference).read_text())["molecules"]
                 if args.reference else None)
    t0 = time.time()
    report = {"lj": lj_benchmark(args.lj, args.seeds, args.walkers, args.peers,
                                 args.seeds_large, settings, args.first_seed, args.budget)}
    report["molecules"] = molecule_benchmark(args.molecules, args.etkdg, args.molecule_budget,
                                             args.molecule_walkers, args.molecule_seeds, reference,
                                             settings, args.molecule_first_seed)
    print(f"wall time {time.time() - t0:.0f} s")
    if args.json:
        report["versions"] = installed_versions()
        report["machine"] = machine()
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))


def installed_versions() -> dict:
    """Versions of the packages whose floating point the searches depend on:
    the searches are chaotic, so another rounding gives other trajectories
    (session 24 could not rerun session 23's runs one for one)."""
    from importlib import metadata
    versions = {}
    for name in ("numpy", "scipy", "torch", "ase", "torchani", "rdkit"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict:
    """The CPU, torch's vector kernels on it and the thread count: with the
    same versions, another CPU or thread count rounds differently too
    (session 25: LJ13 seed 5 took 339 calls against 325 in session 24's
    table, same versions, one thread)."""
    import platform
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
