"""The cluster benchmark counts every method by the same rule."""
import importlib.util
from pathlib import Path

import pytest
import torch

from ecd_chem.potentials import LennardJonesModel, random_cluster

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "global.py"
LJ13 = -44.326801


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("global_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_watched_model_notes_the_calls_spent_at_the_first_geometry_at_the_target(bench):
    atoms = random_cluster(13, seed=0)
    model = bench.WatchedModel(LJ13)
    far = torch.tensor(atoms.positions)[None]
    model.evaluate(atoms, far.expand(3, -1, -1))
    assert model.calls == 3 and model.hit is None
    energy, _ = LennardJonesModel().evaluate(atoms, far)
    model.target = float(energy[0]) - 5e-4          # within 0.001: a hit
    model.evaluate(atoms, torch.cat([far, far]))
    assert model.hit == 5                           # the whole batch of 2 is spent
    model.evaluate(atoms, far)
    assert model.hit == 5 and model.calls == 6       # the first hit stays


def test_search_is_counted_at_the_evaluation_that_reaches_the_minimum(bench):
    """Seed 0 finds LJ13 within its first quench: the hit comes before the
    quench ends at fmax 0.01 and archives it."""
    hit, archived_at, result = bench.run_ecd(13, 0, LJ13, 20_000, 1)
    assert hit is not None and archived_at is not None
    assert hit < archived_at <= result.force_calls


def test_reports_record_the_installed_versions(bench):
    versions = bench.installed_versions()
    assert versions["numpy"] == __import__("numpy").__version__
    assert versions["torch"].startswith(torch.__version__.split("+")[0])


def test_reports_record_the_machine(bench):
    machine = bench.machine()
    assert machine["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["torch_threads"] == torch.get_num_threads()
    assert machine["cpu"]
