"""Conformer search of the bundled n-butane with ANI-1x: ECD walkers + quenches.

    python examples/search_butane.py [OUTDIR]
"""
import pathlib
import sys

from ase.io import read

from ecd_chem import ConformerSearch
from ecd_chem.calculators import ANICalculator

here = pathlib.Path(__file__).resolve().parent
out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output")
out.mkdir(parents=True, exist_ok=True)

atoms = read(here.parent / "molecules" / "n-butane.xyz")
search = ConformerSearch(atoms, ANICalculator("ani1x"), walkers=8, max_force_calls=1000, seed=0)
result = search.run()
result.write(out / "butane_conformers.xyz")

print(f"{len(result.conformers)} conformers from {result.force_calls} force calls "
      f"(ECD {result.ecd_calls}, quench {result.quench_calls}, refine {result.refine_calls})")
for c in result.conformers:
    print(f"  rank {c.info['rank']}  {c.info['relative_kcal_mol']:6.2f} kcal/mol  "
          f"C-C-C-C {c.get_dihedral(0, 1, 2, 3):6.1f} deg  weight {c.info['boltzmann_weight']:.2f}")
print(f"output: {out / 'butane_conformers.xyz'} (multi-frame XYZ, lowest first)")
