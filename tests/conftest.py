import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from ecd_chem.potentials import LennardJones


def lj_cluster(n, seed=0, density=0.8):
    """n LJ atoms uniform in a sphere at roughly liquid density, no pair closer than 0.9."""
    rng = np.random.default_rng(seed)
    radius = (3 * n / (4 * np.pi * density)) ** (1 / 3)
    points = []
    while len(points) < n:
        p = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(p) <= radius and all(np.linalg.norm(p - q) > 0.9 for q in points):
            points.append(p)
    atoms = Atoms(f"Ar{n}", positions=points)
    atoms.calc = LennardJones()
    return atoms


@pytest.fixture
def lj13():
    return lj_cluster(13, seed=1)


@pytest.fixture(scope="session")
def ani():
    from ecd_chem.calculators import ANICalculator
    return ANICalculator("ani1x", device="cpu")


@pytest.fixture
def emt_cluster():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.pbc = False
    atoms.center(vacuum=5.0)
    atoms.rattle(0.1, seed=2)
    atoms.calc = EMT()
    return atoms


def rattled(name, calc, amount=0.15, seed=0):
    atoms = molecule(name)
    atoms.rattle(amount, seed=seed)
    atoms.calc = calc
    return atoms
