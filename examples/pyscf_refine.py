"""ANI-1x conformer search of n-butane, then the three lowest conformers refined
with PySCF (HF/STO-3G here to stay fast; use e.g. method='b3lyp', basis='def2-svp').

    python examples/pyscf_refine.py [OUTDIR]
"""
import pathlib
import sys

from ase.io import read
from ase.units import kcal, mol

from ecd_chem import ConformerSearch, ECDOpt
from ecd_chem.calculators import ANICalculator, PySCFCalculator
from ecd_chem.structures import write_ensemble

here = pathlib.Path(__file__).resolve().parent
out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output")
out.mkdir(parents=True, exist_ok=True)

atoms = read(here.parent / "molecules" / "n-butane.xyz")
result = ConformerSearch(atoms, ANICalculator("ani1x"), walkers=8, max_force_calls=1000,
                         seed=0).run()

refined = []
for conformer in result.conformers[:3]:
    conformer = conformer.copy()
    conformer.calc = PySCFCalculator("hf", "sto-3g")
    opt = ECDOpt(conformer, logfile=None, seed=0)
    opt.run(fmax=0.02, steps=200)
    conformer.info["energy"] = conformer.get_potential_energy()
    refined.append(conformer)
    print(f"ANI rank {conformer.info['rank']}: PySCF E = {conformer.info['energy']:.6f} eV "
          f"after {opt.nsteps + 1} force calls")
refined.sort(key=lambda a: a.info["energy"])
for a in refined:
    print(f"  {(a.info['energy'] - refined[0].info['energy']) / (kcal / mol):6.2f} kcal/mol "
          f"(HF/STO-3G), C-C-C-C {a.get_dihedral(0, 1, 2, 3):6.1f}")
write_ensemble(out / "butane_hf.xyz", refined)
print(f"output: {out / 'butane_hf.xyz'}")
