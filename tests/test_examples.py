"""The examples run as a user would run them."""
import subprocess
import sys
from pathlib import Path

import pytest
from ase.io import read

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script, args, output", [
    ("optimize_ethanol.py", [], "ethanol_opt.traj"),
    ("search_butane.py", [], "butane_conformers.xyz"),
    ("smiles_search.py", ["OCCO"], "smiles_conformers.xyz"),
    ("pyscf_refine.py", [], "butane_hf.xyz"),
])
def test_example_runs(script, args, output, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args, str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "output" in run.stdout
    assert len(read(tmp_path / output, ":")) >= 1
