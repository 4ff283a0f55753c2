"""Optimize the bundled ethanol with ANI-1x and ECDOpt, the way one uses BFGS.

    python examples/optimize_ethanol.py [OUTDIR]
"""
import pathlib
import sys

from ase.io import read, write

from ecd_chem import ECDOpt
from ecd_chem.calculators import ANICalculator

here = pathlib.Path(__file__).resolve().parent
out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output")
out.mkdir(parents=True, exist_ok=True)

atoms = read(here.parent / "molecules" / "ethanol.xyz")
atoms.rattle(0.15, seed=0)                      # start away from the minimum
atoms.calc = ANICalculator("ani1x")

opt = ECDOpt(atoms, logfile="-", trajectory=str(out / "ethanol_opt.traj"), seed=0)
converged = opt.run(fmax=0.05)
write(out / "ethanol_opt.xyz", atoms)
print(f"converged={converged} force calls={opt.nsteps + 1} "
      f"(ECD {opt.ecd_calls}, quench {opt.quench_calls}) "
      f"E={atoms.get_potential_energy():.6f} eV")
print(f"outputs: {out / 'ethanol_opt.traj'} (trajectory), {out / 'ethanol_opt.xyz'} (final)")
