"""Force-provider throughput, in one run on one machine.

1. ANI-1x evaluations per second for W = 1, 8, 64, 256, 1024 copies of alanine
   dipeptide (22 atoms, rattled): batched ``ANIModel.evaluate`` against a loop
   over torchani's own ASE calculator on the same network. CPU always; CUDA too
   when a GPU is present (the device is printed).
2. The integrator's own share of an ECD step at W = 256 with ANI.
3. PySCF (HF/STO-3G and B3LYP/def2-SVP, ethanol): SCF cycles per geometry over a
   30-step ECD run, warm-started scanner against a fresh guess at every geometry.

    python benchmarks/throughput.py [--sizes 1 8 64 256 1024] [--json out.json]
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
from ecd_chem.calculators import ANIModel, Evaluator, PySCFCalculator
from ecd_chem.calculators.ani import load_network

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
        model.fast_aev = False
        torchani_aev = W / timed(lambda: model.evaluate(atoms, x))
        model.fast_aev = True
        batched = W / timed(lambda: model.evaluate(atoms, x))
        rows.append({"W": W, "batched_per_s": batched, "batched_torchani_aev_per_s": torchani_aev,
                     "loop_per_s": looped, "ratio": batched / looped})
        print(f"  W={W:5d}  batched {batched:10.0f}/s  (torchani AEV {torchani_aev:7.0f}/s)  "
              f"loop {looped:7.0f}/s  ratio {batched / looped:6.1f}x", flush=True)
    return rows


def integrator_share(atoms, W=256, steps=20):
    model = ANIModel("ani1x", device="cpu")
    evaluate = Evaluator(model, atoms, dtype=torch.float64)
    x = geometries(atoms, W)
    hp = dynamics.ECDParams(bounce_every=5, fixed_bounces=100)
    state = dynamics.init(x, *evaluate(x), hp, seed=0)
    t_ecd = t_eval = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        state = dynamics.propose(state, hp)
        t1 = time.perf_counter()
        f, g = evaluate(state.x)
        t2 = time.perf_counter()
        state = dynamics.absorb(state, f, g, hp)
        t3 = time.perf_counter()
        t_ecd += (t1 - t0) + (t3 - t2)
        t_eval += t2 - t1
    return t_ecd / (t_ecd + t_eval)


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
    parser.add_argument("--json")
    args = parser.parse_args()
    atoms = read(HERE.parent / "molecules" / "alanine_dipeptide.xyz")
    report = {"cpu": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads()}
    print(f"ANI-1x, alanine dipeptide ({len(atoms)} atoms), CPU, {torch.get_num_threads()} threads")
    report["ani_cpu"] = ani_throughput(atoms, args.sizes, "cpu")
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
        print(f"ANI-1x on {report['gpu']}")
        report["ani_cuda"] = ani_throughput(atoms, args.sizes, "cuda")
    share = integrator_share(atoms)
    report["integrator_share_W256"] = share
    print(f"integrator's own share of an ECD step at W=256: {100 * share:.2f}%")
    report["pyscf"] = [pyscf_cycles(m, b) for m, b in (("hf", "sto-3g"), ("b3lyp", "def2-svp"))]
    for p in report["pyscf"]:
        print(f"PySCF {p['method']}/{p['basis']} ethanol, 30 ECD steps: SCF cycles per geometry "
              f"warm {p['warm']:.2f}, cold {p['cold']:.2f} ({100 * p['saving']:.0f}% fewer)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
