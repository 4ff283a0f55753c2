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


def ani1ccx_installed() -> bool:
    from ecd_chem.calculators.ani import ANIUnavailable, _load_network
    try:
        _load_network("ani1ccx")
    except ANIUnavailable:
        return False
    return True


@pytest.fixture(params=["ani1x", "ani1ccx"])
def ani_model(request):
    """Each ANI model by name. ANI-1ccx's files come from `ecd-chem fetch-models`,
    which `make setup` runs; under `make test` (ECD_TEST_ANI1CCX=1) a missing
    install fails instead of skipping."""
    import os
    if request.param == "ani1ccx" and not ani1ccx_installed():
        if os.environ.get("ECD_TEST_ANI1CCX"):
            pytest.fail("ANI-1ccx's files are not installed: run `ecd-chem fetch-models`")
        pytest.skip("ANI-1ccx's files are not installed (`ecd-chem fetch-models`)")
    return request.param


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
