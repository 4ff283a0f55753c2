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


@pytest.mark.parametrize("item, expected", [
    ("torsion_pushes=False", ("torsion_pushes", False)), ("kick_memory=0", ("kick_memory", 0)),
    ("surface_kicks=true", ("surface_kicks", True)), ("gap=2.5", ("gap", 2.5)),
    ("target_energy=None", ("target_energy", None)), ("restart_from=sphere", ("restart_from", "sphere"))])
def test_settings_are_read_as_values(bench, item, expected):
    assert bench.parse_setting(item) == expected


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


def test_calls_per_success_count_each_failed_run_at_its_budget(bench):
    assert bench.per_success([10, None, 30], budget=100) == 70
    assert bench.per_success([10, 30], budget=100) == 20          # all found: the mean
    assert bench.per_success([None, None], budget=100) is None


def test_ratio_interval_pairs_runs_by_seed(bench):
    peer = [100, 300, 250, 1200, 80, 400, 90, 600]
    assert bench.ratio_interval([c / 2 for c in peer], peer, 10_000) == (0.5, 0.5, 0.5)
    ratio, low, high = bench.ratio_interval([50, 900, 100, 300, 40, 2000, 45, 150], peer, 10_000)
    assert low < ratio < high
    assert ratio == pytest.approx(3585 / 3020)
    assert bench.ratio_interval([None] * 8, peer, 10_000) is None
    with pytest.raises(ValueError, match="paired"):
        bench.ratio_interval(peer[:4], peer, 10_000)
    # each side's failed runs count at its own budget
    assert bench.ratio_interval([100, 100], [None, 100], 1000, peer_budget=300)[0] == 0.25


def test_merged_reports_keep_seed_order_and_recount(bench):
    def part(first, calls, share):
        return {"lj": {"LJ13": {"ConformerSearch W=1": {
            "runs": len(calls), "first_seed": first, "budget": 100, "calls": calls,
            "calls_archived": calls, "wall_s": 1.0, "ecd_share": share}}},
            "versions": {"numpy": "x"}}
    merged = bench.merge_reports([part(2, [30, None], 0.6), part(0, [10, 20], 0.3)])
    row = merged["lj"]["LJ13"]["ConformerSearch W=1"]
    assert row["calls"] == [10, 20, 30, None]
    assert (row["success"], row["runs"], row["first_seed"]) == (3, 4, 0)
    assert row["mean_calls"] == 20 and row["ecd_share"] == pytest.approx(0.45)
    assert merged["versions"] == {"numpy": "x"} and row["wall_s"] == 2.0
    assert any("3/4" in line for line in bench.summary(merged))
    untimed = part(2, [30, None], 0.6)
    untimed["lj"]["LJ13"]["ConformerSearch W=1"]["wall_s"] = None
    assert bench.merge_reports([part(0, [10, 20], 0.3), untimed])["lj"]["LJ13"][
        "ConformerSearch W=1"]["wall_s"] is None
    with pytest.raises(ValueError, match="overlap or leave a gap at seed 2"):
        bench.merge_reports([part(0, [10, 20], 0.3), part(3, [30], 0.6)])
    longer = part(2, [30, 150], 0.6)
    longer["lj"]["LJ13"]["ConformerSearch W=1"]["budget"] = 1000
    with pytest.raises(ValueError, match="budgets differ"):
        bench.merge_reports([part(0, [10, 20], 0.3), longer])


def test_summary_compares_rows_over_the_seeds_both_ran(bench):
    def row(first, calls):
        return {"runs": len(calls), "first_seed": first, "budget": 1000, "calls": calls,
                "success": sum(c is not None for c in calls), "wall_s": 1.0}
    report = {"lj": {"LJ13": {"ConformerSearch W=1": row(0, [50, 100]),
                              "ConformerSearch W=4": row(2, [10, 10, 10]),
                              "scipy basinhopping": row(0, [100, 200, 20, 20])}}}
    lines = bench.summary(report)
    assert "0.50x scipy basinhopping (95% 0.50-0.50, seeds 0-1)" in lines[0]
    assert "0.50x scipy basinhopping (95% 0.50-0.50, seeds 2-3)" in lines[1]
    assert "x scipy" not in lines[2]
    report["lj"]["LJ13"]["scipy basinhopping"] = row(0, [100, 200])
    assert "0.50x scipy basinhopping (95% 0.50-0.50)" in bench.summary(report)[0]


def test_budget_option_sets_every_runs_budget(bench):
    table = bench.lj_benchmark([13], 1, [1], [], 1, budget=40)
    row = table["LJ13"]["ConformerSearch W=1"]
    assert row["budget"] == 40 and row["runs"] == 1
    assert row["calls"][0] is None or row["calls"][0] <= 40


def test_random_restarts_start_from_the_runs_cluster(bench):
    atoms = random_cluster(13, seed=5)
    energy, _ = LennardJonesModel().evaluate(atoms, torch.tensor(atoms.positions)[None])
    assert bench.run_random(13, 5, float(energy[0]) - 5e-4, 1000) == 1


def test_random_restarts_count_batched_quenches_as_if_run_one_after_another(bench):
    """Seed 5 needs several quenches, so the batches of 3 split them."""
    one_by_one = bench.run_random(13, 5, LJ13, 20_000, batch=1)
    assert one_by_one is not None and one_by_one > 150
    assert bench.run_random(13, 5, LJ13, 20_000, batch=3) == one_by_one
    assert bench.run_random(13, 5, LJ13, one_by_one - 1, batch=3) is None


def test_random_restarts_are_a_reference_not_the_best_peer(bench):
    def row(calls):
        return {"runs": len(calls), "first_seed": 0, "budget": 1000, "calls": calls,
                "success": sum(c is not None for c in calls), "wall_s": 1.0}
    report = {"lj": {"LJ13": {"ConformerSearch W=1": row([50, 100]),
                              "scipy basinhopping": row([100, 200]),
                              bench.RANDOM: row([25, 50])}}}
    line = bench.summary(report)[0]
    assert "0.50x scipy basinhopping (95% 0.50-0.50)" in line
    assert f"2.00x {bench.RANDOM} (95% 2.00-2.00)" in line
