"""The exact batched Lennard-Jones potential against ASE's, and batch == loop."""
import numpy as np
import torch
from ase.calculators.lj import LennardJones as AseLJ

from ecd_chem.potentials import LennardJones, LennardJonesModel

from .conftest import lj_cluster


def test_matches_ase_lennard_jones_with_large_cutoff():
    atoms = lj_cluster(19, seed=3)
    ours = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = AseLJ(epsilon=1.0, sigma=1.0, rc=100.0, smooth=False)
    shift = 4 * (100.0 ** -12 - 100.0 ** -6) * 19 * 18 / 2    # ASE shifts the pair energy to 0 at rc
    assert np.isclose(ours[0], atoms.get_potential_energy() + shift, atol=1e-9)
    assert np.allclose(ours[1], atoms.get_forces(), atol=1e-9)


def test_batch_equals_individual_and_forces_are_gradients():
    clusters = [lj_cluster(7, seed=s) for s in range(3)]
    x = torch.tensor(np.stack([c.positions for c in clusters]))
    energies, forces = LennardJonesModel().evaluate(clusters[0], x)
    for c, e, f in zip(clusters, energies, forces):
        assert np.isclose(c.get_potential_energy(), e.item())
        assert np.allclose(c.get_forces(), f.numpy())
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(LennardJonesModel().evaluate(clusters[0], xg)[0].sum(), xg)
    assert torch.allclose(-grad, forces, atol=1e-9)


def test_known_lj13_icosahedron_energy():
    from ase.cluster import Icosahedron
    from ase.optimize import LBFGS
    atoms = Icosahedron("Ar", noshells=2, latticeconstant=2 ** (1 / 6) * 1.4)
    atoms.calc = LennardJones()
    LBFGS(atoms, logfile=None).run(fmax=1e-6)
    assert np.isclose(atoms.get_potential_energy(), -44.326801, atol=1e-5)
