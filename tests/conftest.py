import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from ecd_chem.potentials import random_cluster


def lj_cluster(n, seed=0):
    return random_cluster(n, seed=seed)


@pytest.fixture
def lj13():
    return lj_cluster(13, seed=1)


@pytest.fixture(scope="session")
def ani():
    """ANI-1x in float32 on the CPU, or on the device named by ECD_TEST_DEVICE
    (``ECD_TEST_DEVICE=cuda pytest`` runs the ANI tests on a GPU)."""
    import os
    from ecd_chem.calculators import ANICalculator
    return ANICalculator("ani1x", device=os.environ.get("ECD_TEST_DEVICE", "cpu"))


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
