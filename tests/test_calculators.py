"""Force providers: PySCF and ANI against their own libraries, finite differences,
the batched interface, and bad input."""
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.io import read
from ase.units import Bohr, Hartree

from ecd_chem import ECDOpt
from ecd_chem.calculators import (ANICalculator, ANIModel, ASELoopModel, Evaluator,
                                  PySCFCalculator, SCFNotConverged, as_batch_model)
from ecd_chem.potentials import LennardJones

MOLECULES = Path(__file__).resolve().parent.parent / "molecules"

def central_differences(atoms, indices, h=1e-3):
    """-dE/dx by central differences for the (atom, axis) pairs given."""
    out = []
    for i, k in indices:
        shifted = []
        for sign in (1, -1):
            probe = atoms.copy()
            probe.calc = atoms.calc
            probe.positions[i, k] += sign * h
            shifted.append(probe.get_potential_energy())
        out.append(-(shifted[0] - shifted[1]) / (2 * h))
    return np.array(out)


PAIRS = [(0, 0), (0, 2), (1, 1), (2, 2)]


# -- PySCF ----------------------------------------------------------------------------------

def test_pyscf_energy_equals_pyscf_run_directly():
    from pyscf import gto, scf
    atoms = molecule("H2O")
    atoms.calc = PySCFCalculator("hf", "sto-3g")
    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                basis="sto-3g", unit="Angstrom", verbose=0)
    reference = scf.RHF(mol).run(conv_tol=1e-10).e_tot
    assert abs(atoms.get_potential_energy() / Hartree - reference) < 1e-8
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_pyscf_forces_equal_finite_differences():
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=1)
    atoms.calc = PySCFCalculator("hf", "sto-3g", conv_tol=1e-12)
    analytic = atoms.get_forces()
    numeric = central_differences(atoms, PAIRS)
    assert np.allclose([analytic[i, k] for i, k in PAIRS], numeric, atol=2e-4)


def test_pyscf_dft_forces_equal_finite_differences():
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=2)
    atoms.calc = PySCFCalculator("pbe0", "sto-3g", conv_tol=1e-12, grid_level=4)
    analytic = atoms.get_forces()
    numeric = central_differences(atoms, PAIRS[:2])
    assert np.allclose([analytic[i, k] for i, k in PAIRS[:2]], numeric, atol=1e-3)


def test_open_shell_doublet_runs_unrestricted():
    from pyscf import gto, scf
    oh = Atoms("OH", positions=[(0, 0, 0), (0, 0, 0.97)])
    oh.calc = PySCFCalculator("hf", "sto-3g", spin=1)
    energy = oh.get_potential_energy() / Hartree
    assert isinstance(oh.calc._scf_of(oh.calc.scanner), scf.uhf.UHF)
    mol = gto.M(atom="O 0 0 0; H 0 0 0.97", basis="sto-3g", spin=1, verbose=0)
    assert abs(energy - scf.UHF(mol).run(conv_tol=1e-10).e_tot) < 1e-8


def test_mp2_has_analytic_gradients():
    from pyscf import gto, mp, scf
    atoms = molecule("H2O")
    atoms.calc = PySCFCalculator("mp2", "sto-3g")
    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                basis="sto-3g", unit="Angstrom", verbose=0)
    mf = scf.RHF(mol).run(conv_tol=1e-10)
    assert abs(atoms.get_potential_energy() / Hartree - mp.MP2(mf).run().e_tot) < 1e-8
    assert atoms.get_forces().shape == (3, 3)


def test_scanner_warm_start_needs_fewer_cycles():
    atoms = molecule("CH3CH2OH")
    atoms.calc = PySCFCalculator("hf", "sto-3g")
    atoms.get_potential_energy()
    atoms.positions[0, 0] += 0.02
    atoms.get_potential_energy()
    cold, warm = atoms.calc.scf_cycles
    assert warm < cold


def test_scf_failure_is_rescued_by_a_stronger_solver():
    from pyscf import gto, scf
    atoms = molecule("CH3CH2OH")
    atoms.calc = PySCFCalculator("hf", "sto-3g", max_cycle=5)      # DIIS needs about 12
    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                basis="sto-3g", unit="Angstrom", verbose=0)
    assert abs(atoms.get_potential_energy() / Hartree - scf.RHF(mol).run().e_tot) < 1e-7
    assert atoms.calc.scf_cycles[0] > 5


def test_scf_that_cannot_converge_raises_with_geometry():
    atoms = molecule("H2O")
    atoms.calc = PySCFCalculator("hf", "sto-3g", conv_tol=0.0, max_cycle=3)   # unreachable
    with pytest.raises(SCFNotConverged, match="did not converge") as info:
        atoms.get_potential_energy()
    assert np.allclose(info.value.positions, atoms.positions)
    assert info.value.symbols == atoms.get_chemical_symbols()


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="b3lypp"), "unknown PySCF method"),
    (dict(basis="def2-nonsense"), "unknown basis"),
    (dict(spin=-1), "spin"),
])
def test_pyscf_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PySCFCalculator(**kwargs)


def test_impossible_charge_spin_is_a_clear_error_before_scf():
    calc = PySCFCalculator("hf", "sto-3g", spin=0)
    with pytest.raises(ValueError, match="impossible"):
        calc.check(Atoms("OH", positions=[(0, 0, 0), (0, 0, 0.97)]))
    assert calc.scanner is None


def ammonium():
    """NH4+ with its formal charge on N, as SMILES and SDF input carry it."""
    a = 1.03 / 3 ** 0.5
    return Atoms("NH4", positions=[(0, 0, 0), (a, a, a), (-a, -a, a), (-a, a, -a), (a, -a, -a)],
                 charges=[1, 0, 0, 0, 0])


def test_pyscf_charge_defaults_to_the_structures_formal_charge():
    from ecd_chem.calculators import make_calculator
    atoms = ammonium()
    assert make_calculator("pyscf", atoms, method="hf", basis="sto-3g").charge == 1
    assert make_calculator("pyscf", molecule("H2O"), method="hf", basis="sto-3g").charge == 0
    with pytest.raises(ValueError, match=r"formal charge of \+1, but the calculator's charge is 2"):
        make_calculator("pyscf", atoms, method="hf", basis="sto-3g", charge=2)


@pytest.mark.parametrize("name, kwargs", [("ani1x", dict(charge=1)), ("emt", dict(spin=2)),
                                          ("lj", dict(charge=-1))])
def test_charge_and_spin_are_refused_where_they_mean_nothing(name, kwargs):
    from ecd_chem.calculators import make_calculator
    with pytest.raises(ValueError, match=f"PySCF settings; {name} takes neither"):
        make_calculator(name, **kwargs)


@pytest.mark.slow
def test_ecdopt_matches_geometric_on_b3lyp_water():
    from pyscf import gto, scf  # noqa: F401
    from pyscf.geomopt.geometric_solver import optimize
    start = molecule("H2O")
    start.rattle(0.05, seed=0)
    mol = gto.M(atom=[(s, p) for s, p in zip(start.get_chemical_symbols(), start.positions)],
                basis="def2-svp", unit="Angstrom", verbose=0)
    mf = mol.RKS(xc="b3lyp")
    mf.conv_tol = 1e-10
    reference = optimize(mf, maxsteps=50)       # geomeTRIC's defaults (GAU-like criteria)
    ref_e = mf.__class__(reference, xc="b3lyp").run(conv_tol=1e-10).e_tot
    ref_x = reference.atom_coords() * Bohr

    atoms = start.copy()
    atoms.calc = PySCFCalculator("b3lyp", "def2-svp")
    assert ECDOpt(atoms, logfile=None, seed=0).run(fmax=0.005, steps=100)
    assert abs(atoms.get_potential_energy() / Hartree - ref_e) < 1e-6
    a, b = atoms.positions - atoms.positions.mean(0), ref_x - ref_x.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1, 1, d]) @ vt
    rmsd = np.sqrt(((a @ rot - b) ** 2).sum(1).mean())
    assert rmsd < 0.01


def test_pyscf_batch_model_has_one_scanner_per_walker():
    atoms = molecule("H2O")
    model = as_batch_model(PySCFCalculator("hf", "sto-3g"))
    x = torch.tensor(np.stack([atoms.positions, atoms.positions + 0.01]))
    energies, forces = model.evaluate(atoms, x)
    assert torch.isfinite(energies).all() and forces.shape == (2, 3, 3)
    assert model.calculator_for(0) is not model.calculator_for(1)
    assert len(model.calculator_for(0).scf_cycles) == 1


# -- ANI ------------------------------------------------------------------------------------

def test_ani_equals_torchani_own_calculator(ani_model):
    import torchani.ase
    from ecd_chem.calculators.ani import load_network
    network, species = load_network(ani_model, "cpu", torch.float64)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=0)
    theirs = atoms.copy()
    theirs.calc = torchani.ase.Calculator(list(species), network)
    atoms.calc = ANICalculator(ani_model, device="cpu", dtype=torch.float64)
    assert abs(atoms.get_potential_energy() - theirs.get_potential_energy()) < 1e-5
    assert np.allclose(atoms.get_forces(), theirs.get_forces(), atol=1e-5)


def test_ani1ccx_is_its_own_model(ani_model):
    """Methane: ANI-1ccx (fit to CCSD(T)*/CBS) -40.4645 Ha, ANI-1x (wB97X/6-31G*)
    -40.4997 Ha; one model's files loaded for the other would show here."""
    atoms = molecule("CH4")
    atoms.calc = ANICalculator(ani_model, device="cpu", dtype=torch.float64)
    expected = {"ani1x": -40.49965, "ani1ccx": -40.46449}[ani_model]
    assert atoms.get_potential_energy() / Hartree == pytest.approx(expected, abs=2e-5)


def test_ani1ccx_without_its_files_says_how_to_install_them(tmp_path, monkeypatch):
    import os
    import torchani
    from ecd_chem.calculators import ANIUnavailable
    from ecd_chem.calculators.ani import _load_network, load_network
    packaged = os.path.join(os.path.dirname(torchani.__file__), "resources", "ani-1ccx_8x",
                            "train0", "networks", "ANN-C.nnf")
    if os.path.getsize(packaged) > 0:
        pytest.skip("this torchani ships ANI-1ccx's files itself")
    monkeypatch.setenv("ECD_CHEM_ANI_DIR", str(tmp_path))
    caches = (_load_network, load_network)          # built models are cached per process
    for cache in caches:
        cache.cache_clear()
    try:
        for dtype in (torch.float32, torch.float64):
            with pytest.raises(ANIUnavailable, match="ani1ccx.*empty.*ecd-chem fetch-models"):
                ANICalculator("ani1ccx", device="cpu", dtype=dtype)
    finally:
        for cache in caches:
            cache.cache_clear()


def test_ani_batched_equals_the_loop():
    atoms = molecule("CH3CH2OH")
    model = ANIModel("ani1x", device="cpu", dtype=torch.float64)
    rng = np.random.default_rng(0)
    x = torch.tensor(atoms.positions[None] + rng.normal(0, 0.05, (8, len(atoms), 3)))
    energies, forces = model.evaluate(atoms, x)
    for w in range(8):
        e1, f1 = model.evaluate(atoms, x[w:w + 1])
        assert torch.allclose(e1[0], energies[w], atol=1e-8)
        assert torch.allclose(f1[0], forces[w], atol=1e-8)


def test_ani_float64_forces_equal_finite_differences(ani_model):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    atoms.calc = ANICalculator(ani_model, device="cpu", dtype=torch.float64)
    analytic = atoms.get_forces()
    numeric = central_differences(atoms, PAIRS, h=1e-4)
    assert np.allclose([analytic[i, k] for i, k in PAIRS], numeric, atol=1e-5)


def test_ani_unsupported_element_names_it_and_the_supported_set():
    atoms = molecule("CH3Cl")
    atoms.calc = ANICalculator("ani1x", device="cpu")
    with pytest.raises(ValueError, match=r"Cl.*supported: H, C, N, O"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("atoms, match", [
    (ammonium(), r"neutral molecules; H4N carries a net formal charge of \+1"),
    (molecule("CH3"), "closed-shell molecules; CH3 has an odd number of electrons"),
])
def test_ani_refuses_ions_and_radicals(atoms, match):
    atoms.calc = ANICalculator("ani1x", device="cpu")
    with pytest.raises(ValueError, match=match):
        atoms.get_potential_energy()


@pytest.mark.parametrize("kwargs", [dict(model="ani2x"), dict(device="tpu"),
                                    dict(dtype=torch.float16)])
def test_ani_bad_settings(kwargs):
    with pytest.raises(ValueError):
        ANICalculator(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_ani_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        ANICalculator(device="cuda")


def test_both_contractions_of_the_angular_backward_agree():
    from ecd_chem.calculators.aev import contract_outer
    gen = torch.Generator().manual_seed(0)
    g, u, v = (torch.randn(*shape, dtype=torch.float64, generator=gen)
               for shape in ((3, 5, 8, 4), (3, 5, 8), (3, 5, 4)))
    for a, b in zip(contract_outer(g, u, v, elementwise=True),
                    contract_outer(g, u, v, elementwise=False)):
        assert torch.allclose(a, b, atol=1e-12)
    # and they are the gradients of sum(g * outer(u, v))
    u_, v_ = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
    (g * u_[..., :, None] * v_[..., None, :]).sum().backward()
    grad_u, grad_v = contract_outer(g, u, v, elementwise=True)
    assert torch.allclose(u_.grad, grad_u) and torch.allclose(v_.grad, grad_v)


def test_batch_ensemble_equals_torchani_ensemble_and_its_gradient():
    model = ANIModel("ani1x", device="cpu", dtype=torch.float64)
    atoms = read(MOLECULES / "alanine_dipeptide.xyz")            # H, C, N and O
    species = model.species_tensor(atoms)
    rng = np.random.default_rng(1)
    x = torch.tensor(atoms.positions[None] + rng.normal(0, 0.1, (6, len(atoms), 3)))
    aev = model.aev(species, x)
    a = aev.clone().requires_grad_(True)
    b = aev.clone().requires_grad_(True)
    ours = model.ensemble(species, a)
    theirs = model.network[1]((species.expand(6, -1), b)).energies
    assert torch.allclose(ours, theirs, atol=1e-12)
    (ga,) = torch.autograd.grad(ours.sum(), a)
    (gb,) = torch.autograd.grad(theirs.sum(), b)
    assert torch.allclose(ga, gb, atol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 5e-4)])
def test_ani_batched_modules_equal_torchani_modules(dtype, atol, ani_model):
    model = ANIModel(ani_model, device="cpu", dtype=dtype)
    atoms = read(MOLECULES / "alanine_dipeptide.xyz")
    rng = np.random.default_rng(2)
    x = torch.tensor(atoms.positions[None] + rng.normal(0, 0.05, (4, len(atoms), 3)))
    ours = model.evaluate(atoms, x)
    model.batched_modules = False
    theirs = model.evaluate(atoms, x)
    for mine, reference in zip(ours, theirs):
        assert torch.allclose(mine, reference, atol=atol, rtol=0)


def test_ani_float32_total_energy_is_not_rounded_to_float32():
    """Three alanine dipeptides, -40 500 eV, where float32 steps are 3.9e-3 eV:
    the float32 model must still give totals within 1e-3 eV of float64."""
    one = read(MOLECULES / "alanine_dipeptide.xyz")
    atoms = one.copy()
    for shift in (30.0, 60.0):
        other = one.copy()
        other.translate([shift, 0.0, 0.0])
        atoms += other
    rng = np.random.default_rng(3)
    x = torch.tensor(atoms.positions[None] + rng.normal(0, 0.05, (16, len(atoms), 3)))
    exact, _ = ANIModel("ani1x", device="cpu", dtype=torch.float64).evaluate(atoms, x)
    single, _ = ANIModel("ani1x", device="cpu", dtype=torch.float32).evaluate(atoms, x)
    assert exact.abs().min() > 32768                    # float32 spacing there: 3.9e-3 eV
    assert (single - exact).abs().max() < 1e-3


# -- the batched interface --------------------------------------------------------------------

class FailsOnSecondWalker(LennardJones):
    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        if atoms.positions[0, 0] > 50:
            raise RuntimeError("boom")
        super().calculate(atoms, properties, system_changes)


def test_one_failing_walker_does_not_spoil_the_others():
    from ecd_chem.potentials import random_cluster
    atoms = random_cluster(7, seed=0)
    x = torch.tensor(np.stack([atoms.positions, atoms.positions + 100.0, atoms.positions]))
    energies, forces = ASELoopModel(FailsOnSecondWalker()).evaluate(atoms, x)
    assert torch.isnan(energies[1]) and torch.isfinite(energies[[0, 2]]).all()
    assert torch.isfinite(forces[[0, 2]]).all()


def test_evaluator_counts_every_geometry_and_returns_gradients():
    from ecd_chem.potentials import random_cluster
    atoms = random_cluster(7, seed=0)
    evaluator = Evaluator(as_batch_model(atoms.calc), atoms)
    x = torch.tensor(np.stack([atoms.positions] * 5))
    f, g = evaluator(x)
    evaluator(x[:2])
    assert evaluator.calls == 7
    assert np.allclose(-g[0].numpy(), atoms.get_forces())


@pytest.mark.parametrize("name", ["H2", "H2O", "CH3CH2OH", "C6H6"])
def test_batch_aev_equals_torchani_aev_and_its_gradient(name):
    from ecd_chem.calculators.aev import BatchAEV
    from ecd_chem.calculators.ani import ANIModel
    model = ANIModel("ani1x", device="cpu", dtype=torch.float64)
    atoms = molecule(name)
    species = model.species_tensor(atoms)
    rng = np.random.default_rng(0)
    x = torch.tensor(atoms.positions[None] + rng.normal(0, 0.15, (5, len(atoms), 3)))
    x[3] *= 1.6                         # some pairs leave the cutoffs in one conformer only
    reference, fast = model.network[0], BatchAEV(model.network[0])
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ours = fast(species, a)
    theirs = reference((species.expand(5, -1), b)).aevs
    assert torch.allclose(ours, theirs, atol=1e-10)
    weights = torch.randn(ours.shape[-1], dtype=torch.float64)
    (ga,) = torch.autograd.grad((ours * weights).sum(), a)
    (gb,) = torch.autograd.grad((theirs * weights).sum(), b)
    assert torch.allclose(ga, gb, atol=1e-9)


# -- ANI-1ccx's files: the one-time install ----------------------------------------------------

def fake_torchani_wheel(path, folder="ani-1ccx_8x", content=b"x"):
    """A zip laid out like a torchani wheel, with one model folder's files
    (content as given) and the empty 'train' entry the 2.0 wheel carries."""
    import zipfile
    from ecd_chem.calculators.ani_files import CONSTANTS
    prefix = f"torchani/resources/{folder}/"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(prefix + CONSTANTS, content)
        archive.writestr(prefix + "sae_linfit.dat", content)
        archive.writestr(prefix + "train", b"")
        for k in range(8):
            for element in "HCNO":
                archive.writestr(f"{prefix}train{k}/networks/ANN-{element}.nnf", content)
        archive.writestr("torchani/__init__.py", b"")
    return path


def test_install_from_wheel_writes_the_model_folder_whole_and_replaces_an_old_one(tmp_path):
    import os
    from ecd_chem.calculators.ani_files import install_from_wheel, missing_files
    target = tmp_path / "ani"
    (target / "ani-1ccx_8x" / "stale").mkdir(parents=True)
    (target / ".tmp-ani-1ccx_8x.999999999.abc").mkdir()      # a killed install's leftover
    wheel = fake_torchani_wheel(tmp_path / "torchani.whl")
    (written,) = install_from_wheel(str(wheel), str(target))
    assert written == str(target / "ani-1ccx_8x")
    assert missing_files(written, 8) == []
    assert not (target / "ani-1ccx_8x" / "stale").exists()
    assert not (target / "ani-1ccx_8x" / "train").exists()        # the empty entry is left out
    assert sorted(os.listdir(target)) == ["ani-1ccx_8x"]            # no staging folder left


def test_a_wheel_without_the_models_files_installs_nothing(tmp_path):
    from ecd_chem.calculators.ani_files import install_from_wheel
    wheel = fake_torchani_wheel(tmp_path / "torchani.whl", folder="ani-1x_8x")
    with pytest.raises(ValueError, match="no files for ani-1ccx_8x"):
        install_from_wheel(str(wheel), str(tmp_path / "ani"))
    assert list((tmp_path / "ani").iterdir()) == []


def test_fetch_models_refuses_a_wheel_that_is_not_torchani_2_0(tmp_path):
    import subprocess
    import sys
    wheel = fake_torchani_wheel(tmp_path / "torchani-2.0-py3-none-any.whl")
    run = subprocess.run([sys.executable, "-m", "ecd_chem.cli", "fetch-models", "--wheel",
                          str(wheel), "--dir", str(tmp_path / "ani")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "is not the torchani==2.0 wheel" in run.stderr
    assert not (tmp_path / "ani" / "ani-1ccx_8x").exists()
