"""Force-provider throughput, in one run on one machine.

1. ANI-1x evaluations per second for W = 1, 8, 64, 256, 1024 copies of alanine
   dipeptide (22 atoms, rattled): batched ``ANIModel.evaluate`` (with its own
   batched AEV and ensemble modules, and with torchani's) against a loop over
   torchani's own ASE calculator on the same network. CPU, and CUDA when a GPU is
   present (the device is printed); on CUDA also with TF32 matrix products, and
   the largest energy change that causes.
2. The integrator's own share of an ECD step at W = 256 with ANI, per device.
   With ``--parts search``: a whole ConformerSearch (alanine dipeptide, W walkers,
   40 W force calls) and the share of its wall time spent in ANI evaluations;
   with ``search-lj``: the same for LJ38 with the exact LJ potential on the CPU
   (100 W force calls), whose evaluations cost little, so that the search's own
   work (quench steps, ECD steps, dedup) shows.
3. PySCF (HF/STO-3G and B3LYP/def2-SVP, ethanol): SCF cycles per geometry over a
   30-step ECD run, warm-started scanner against a fresh guess at every geometry.

    python benchmarks/throughput.py [--sizes 1 8 64 256 1024] [--devices cpu cuda]
                                    [--parts ani integrator search search-lj pyscf]
                                    [--search-walkers 64 1024] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import numpy as np
import torch
from ase.io import read

from ecd_chem import ECDOpt, dynamics
from ecd_chem.calculators import ANICalculator, ANIModel, Evaluator, PySCFCalculator
from ecd_chem.calculators.ani import load_network
from ecd_chem.potentials import LennardJonesModel, random_cluster

HERE = pathlib.Path(__file__).resolve().parent


def geometries(atoms, W, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(atoms.positions[None] + rng.normal(0, 0.05, (W, len(atoms), 3)))


def timed(fn, min_time=2.0, min_reps=2):
    fn()                                   # warm-up
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_time:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def ani_throughput(atoms, sizes, device):
    import torchani.ase
    model = ANIModel("ani1x", device=device, dtype=torch.float32)
    cuda = model.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def rate(W, x):
        """Evaluations per second, the GPU's queue drained after each call."""
        return W / timed(lambda: (model.evaluate(atoms, x), sync()))
    network, species = load_network("ani1x", str(model.device), torch.float32)
    theirs = torchani.ase.Calculator(list(species), network)
    rows = []
    distinct = geometries(atoms, 64, seed=1)  # the loop's rate does not depend on W

    def loop():
        for w in range(len(distinct)):      # distinct geometries: no calculator cache hits
            probe = atoms.copy()
            probe.positions = distinct[w].numpy()
            probe.calc = theirs
            probe.get_forces()
    looped = len(distinct) / timed(loop)
    for W in sizes:
        x = geometries(atoms, W)
        model.batched_modules = False
        torchani_modules = rate(W, x)
        model.batched_modules = True
        batched = rate(W, x)
        row = {"W": W, "batched_per_s": batched, "batched_torchani_modules_per_s": torchani_modules,
               "loop_per_s": looped, "ratio": batched / looped}
        line = (f"  W={W:6d}  batched {batched:10.0f}/s  (torchani modules {torchani_modules:9.0f}/s)"
                f"  loop {looped:7.0f}/s  ratio {batched / looped:7.1f}x")
        if cuda:                          # TF32 matrix products: faster, less exact
            exact = model.evaluate(atoms, x)[0]
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                row["batched_tf32_per_s"] = rate(W, x)
                row["tf32_max_energy_change_eV"] = float((model.evaluate(atoms, x)[0] - exact)
                                                         .abs().max())
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
            line += (f"  TF32 {row['batched_tf32_per_s']:10.0f}/s"
                     f" (|dE| <= {row['tf32_max_energy_change_eV']:.1e} eV)")
        rows.append(row)
        print(line, flush=True)
    return rows


def integrator_share(atoms, device="cpu", W=256, steps=20, state_device="cpu"):
    """Share of an ECD step's time spent in the integrator (propose + absorb), the
    walker state (float64) kept on ``state_device``."""
    model = ANIModel("ani1x", device=device)
    evaluate = Evaluator(model, atoms, dtype=torch.float64)
    x = geometries(atoms, W).to(state_device)
    hp = dynamics.ECDParams(bounce_every=5, fixed_bounces=100)
    state = dynamics.init(x, *evaluate(x), hp, seed=0)
    sync = torch.cuda.synchronize if str(state_device).startswith("cuda") else (lambda: None)
    t_ecd = t_eval = 0.0
    for step in range(steps + 1):          # the first step warms up, untimed
        t0 = time.perf_counter()
        state = dynamics.propose(state, hp)
        sync()
        t1 = time.perf_counter()
        f, g = evaluate(state.x)              # returns on the CPU: synchronized
        f, g = f.to(state_device), g.to(state_device)
        t2 = time.perf_counter()
        state = dynamics.absorb(state, f, g, hp)
        sync()
        t3 = time.perf_counter()
        if step:
            t_ecd += (t1 - t0) + (t3 - t2)
            t_eval += t2 - t1
    return t_ecd / (t_ecd + t_eval)


def search_rate(atoms, calculator, model, walkers, calls_per_walker=40):
    """Force calls per second of a whole search, and the share of its wall time
    spent in ``model.evaluate`` (the batched evaluation the search calls)."""
    from ecd_chem import ConformerSearch
    model_time = 0.0
    evaluate = model.evaluate

    def timed_evaluate(*args):
        nonlocal model_time
        start = time.perf_counter()
        out = evaluate(*args)                     # returns on the CPU: synchronized
        model_time += time.perf_counter() - start
        return out
    model.evaluate = timed_evaluate
    try:
        start = time.perf_counter()
        result = ConformerSearch(atoms, calculator, walkers=walkers,
                                 max_force_calls=calls_per_walker * walkers, seed=0).run()
        wall = time.perf_counter() - start
    finally:
        model.evaluate = evaluate     # a model reused for the next walker count is timed afresh, unwrapped
    return {"walkers": walkers, "force_calls": result.force_calls, "wall_s": wall,
            "calls_per_s": result.force_calls / wall, "model_share": model_time / wall,
            "ecd_share": result.ecd_calls / result.force_calls,
            "minima_found": result.minima_found}


def pyscf_cycles(method="hf", basis="sto-3g", steps=30):
    out = {"method": method, "basis": basis}
    for warm in (True, False):
        atoms = read(HERE.parent / "molecules" / "ethanol.xyz")
        atoms.rattle(0.1, seed=0)
        atoms.calc = PySCFCalculator(method, basis, warm_start=warm)
        ECDOpt(atoms, logfile=None, seed=0, explore_steps=steps, patience=steps,
               bounce_every=7, fixed_bounces=10).run(fmax=1e-9, steps=steps)
        cycles = atoms.calc.scf_cycles[1:]          # the first geometry is cold either way
        out["warm" if warm else "cold"] = statistics.mean(cycles)
    out["saving"] = 1 - out["warm"] / out["cold"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64, 256, 1024])
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"],
                        help="default: cpu, and cuda when available")
    parser.add_argument("--parts", nargs="+", choices=["ani", "integrator", "search", "search-lj", "pyscf"],
                        default=["ani", "integrator", "pyscf"])
    parser.add_argument("--search-walkers", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--json")
    args = parser.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    atoms = read(HERE.parent / "molecules" / "alanine_dipeptide.xyz")
    report = {"cpu": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if "cuda" in devices:
        report["gpu"] = torch.cuda.get_device_name(0)
    for device in devices:
        where = report["gpu"] if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        if "ani" in args.parts:
            print(f"ANI-1x, alanine dipeptide ({len(atoms)} atoms), float32, {where}")
            report[f"ani_{device}"] = ani_throughput(atoms, args.sizes, device)
        if "integrator" in args.parts:
            share = integrator_share(atoms, device)
            report[f"integrator_share_W256_{device}"] = share
            print(f"integrator's own share of an ECD step at W=256, ANI on {where}: "
                  f"{100 * share:.2f}%", flush=True)
            if device == "cuda":                  # the walker state on the GPU as well
                share = integrator_share(atoms, device, state_device="cuda")
                report["integrator_share_W256_cuda_state_on_cuda"] = share
                print(f"  ... with the walker state on the GPU too: {100 * share:.2f}%",
                      flush=True)
        if "search" in args.parts:
            report[f"search_{device}"] = []
            for walkers in args.search_walkers:
                calc = ANICalculator("ani1x", device=device)
                row = search_rate(atoms, calc, calc.model, walkers)
                report[f"search_{device}"].append(row)
                print(f"ConformerSearch, {walkers} walkers, ANI on {where}: {row['force_calls']} "
                      f"force calls in {row['wall_s']:.1f} s, {row['calls_per_s']:.0f}/s, "
                      f"{100 * row['model_share']:.0f}% of the time in ANI", flush=True)
    if "search-lj" in args.parts:
        # the exact LJ potential costs little, so the search's own work shows
        lj = LennardJonesModel()
        report["search_lj38_cpu"] = []
        for walkers in args.search_walkers:
            row = search_rate(random_cluster(38, seed=0), lj, lj, walkers, calls_per_walker=100)
            report["search_lj38_cpu"].append(row)
            print(f"ConformerSearch, LJ38, {walkers} walkers, exact LJ on the CPU "
                  f"({torch.get_num_threads()} threads): {row['force_calls']} force calls in "
                  f"{row['wall_s']:.1f} s, {row['calls_per_s']:.0f}/s, "
                  f"{100 * row['model_share']:.0f}% of the time in the potential", flush=True)
    if "pyscf" in args.parts:
        report["pyscf"] = [pyscf_cycles(m, b) for m, b in (("hf", "sto-3g"), ("b3lyp", "def2-svp"))]
        for p in report["pyscf"]:
            print(f"PySCF {p['method']}/{p['basis']} ethanol, 30 ECD steps: SCF cycles per "
                  f"geometry warm {p['warm']:.2f}, cold {p['cold']:.2f} "
                  f"({100 * p['saving']:.0f}% fewer)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
