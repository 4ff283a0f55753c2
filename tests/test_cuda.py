"""ANI on a CUDA device: the same numbers as on the CPU, and the search runs there.

These run only where CUDA is present (a GPU machine); the CPU suite checks the
same code paths on the CPU, and ``ECD_TEST_DEVICE=cuda pytest`` runs every ANI
test of the suite on the GPU.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import read

from ecd_chem import ConformerSearch, ECDOpt
from ecd_chem.calculators import ANICalculator, ANIModel, Evaluator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MOLECULES = Path(__file__).resolve().parent.parent / "molecules"


def rattled_dipeptide(W, seed=0, amount=0.05):
    atoms = read(MOLECULES / "alanine_dipeptide.xyz")
    rng = np.random.default_rng(seed)
    return atoms, torch.tensor(atoms.positions[None] + rng.normal(0, amount, (W, len(atoms), 3)))


def test_auto_device_picks_cuda():
    assert ANIModel("ani1x").device.type == "cuda"


def test_cuda_float64_equals_cpu_float64():
    atoms, x = rattled_dipeptide(16)
    on_gpu = ANIModel("ani1x", device="cuda", dtype=torch.float64).evaluate(atoms, x)
    on_cpu = ANIModel("ani1x", device="cpu", dtype=torch.float64).evaluate(atoms, x)
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.device.type == "cpu" and gpu.dtype == torch.float64
        assert torch.allclose(gpu, cpu, atol=1e-8, rtol=0)


@pytest.mark.parametrize("batched_modules", [True, False])
def test_cuda_float32_is_within_rounding_of_float64(batched_modules):
    atoms, x = rattled_dipeptide(64, seed=1)
    model = ANIModel("ani1x", device="cuda", dtype=torch.float32)
    model.batched_modules = batched_modules
    energies, forces = model.evaluate(atoms, x)
    exact_e, exact_f = ANIModel("ani1x", device="cpu", dtype=torch.float64).evaluate(atoms, x)
    assert (energies - exact_e).abs().max() < 1e-3        # eV, of about -13 500 eV
    assert (forces - exact_f).abs().max() < 2e-3          # eV/A


def test_cuda_large_batch_equals_small_batches():
    atoms, x = rattled_dipeptide(2048, seed=2)
    model = ANIModel("ani1x", device="cuda", dtype=torch.float64)
    energies, forces = model.evaluate(atoms, x)
    for start in (0, 1000, 2040):
        e, f = model.evaluate(atoms, x[start:start + 8])
        assert torch.allclose(e, energies[start:start + 8], atol=1e-8, rtol=0)
        assert torch.allclose(f, forces[start:start + 8], atol=1e-8, rtol=0)


def test_evaluator_returns_cpu_float64_and_counts():
    atoms, x = rattled_dipeptide(5)
    evaluate = Evaluator(ANIModel("ani1x", device="cuda"), atoms)
    f, g = evaluate(x)
    assert f.device.type == g.device.type == "cpu" and g.dtype == torch.float64
    assert evaluate.calls == 5


def test_ecdopt_on_cuda_reaches_the_cpu_minimum():
    energies = {}
    for device in ("cuda", "cpu"):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.1, seed=0)
        atoms.calc = ANICalculator("ani1x", device=device, dtype=torch.float64)
        assert ECDOpt(atoms, logfile=None, seed=0).run(fmax=0.01, steps=1000)
        energies[device] = atoms.get_potential_energy()
    assert energies["cuda"] == pytest.approx(energies["cpu"], abs=1e-4)


def test_conformer_search_on_cuda_finds_butane_anti_lowest():
    atoms = read(MOLECULES / "n-butane.xyz")
    result = ConformerSearch(atoms, ANICalculator("ani1x", device="cuda"), walkers=8,
                             max_force_calls=1000, seed=0).run()
    dihedrals = [c.get_dihedral(0, 1, 2, 3) % 360 for c in result.conformers]
    assert abs(dihedrals[0] - 180) < 20
    assert any(min(abs(d - 60), abs(d - 300)) < 25 for d in dihedrals)
    assert result.force_calls <= 1000


def test_bonded_preconditioner_on_cuda_equals_cpu():
    from ecd_chem import dynamics as ecd
    from ecd_chem.structures import bond_graph
    atoms = molecule("CH3CH2OH")
    precon = ecd.BondedPreconditioner(bond_graph(atoms))
    x = torch.tensor(atoms.positions)[None].repeat(3, 1, 1)
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    v = torch.randn(3, 2, x[0].numel(), generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    on_gpu = precon(x.cuda())(v.cuda()).cpu()
    assert torch.allclose(on_gpu, precon(x)(v), atol=1e-9)
