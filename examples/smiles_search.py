"""Conformer search from a SMILES string: RDKit ETKDG starts, ECD walkers, ANI-1x.

    python examples/smiles_search.py [SMILES] [OUTDIR]
"""
import pathlib
import sys

from ecd_chem import ConformerSearch
from ecd_chem.calculators import ANICalculator
from ecd_chem.structures import from_smiles

smiles = sys.argv[1] if len(sys.argv) > 1 else "OCCO"
out = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "demo-output")
out.mkdir(parents=True, exist_ok=True)

starts = from_smiles(smiles, conformers=4, seed=0)          # one start per walker
result = ConformerSearch(starts[0], ANICalculator("ani1x"), walkers=4, max_force_calls=1200,
                         seed=0, starts=starts).run()
path = out / "smiles_conformers.xyz"
result.write(path)
print(f"{smiles}: {len(result.conformers)} conformers, {result.force_calls} force calls")
for c in result.conformers:
    print(f"  rank {c.info['rank']}  {c.info['relative_kcal_mol']:6.2f} kcal/mol")
print(f"output: {path}")
