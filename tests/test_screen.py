"""ecd-chem screen: many molecules on a Dask LocalCluster, failures, resume."""
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from ase.io import read

pytest.importorskip("distributed")
pytest.importorskip("rdkit")

from ecd_chem.screen import ScreenSettings, read_library, screen  # noqa: E402
from ecd_chem.structures import InputError  # noqa: E402

FOUR = "CCO ethanol\nOCCO ethanediol\nCCCO propanol\nNCCO ethanolamine\n"
FAST = ScreenSettings(walkers=4, max_calls=300, device="cpu")


def rows_of(out):
    with open(out / "summary.csv") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    with Client(cluster) as c:
        yield c
    cluster.close()


def test_two_workers_four_molecules(tmp_path, client):
    (tmp_path / "lib.smi").write_text(FOUR)
    rows = screen(tmp_path / "lib.smi", tmp_path / "out", FAST, client=client)
    assert [r["status"] for r in rows] == ["done"] * 4
    table = rows_of(tmp_path / "out")
    assert set(table) == {"ethanol", "ethanediol", "propanol", "ethanolamine"}
    for name, row in table.items():
        summary = json.loads((tmp_path / "out" / name / "summary.json").read_text())
        frames = read(tmp_path / "out" / name / "conformers.xyz", ":")
        assert len(frames) == int(row["conformers"]) == len(summary["conformers"])
        assert float(row["lowest_energy_eV"]) == pytest.approx(frames[0].info["energy_eV"])
        assert 0 < int(row["force_calls"]) <= 300
        assert summary["merge_top_rotamers"] is True and summary["charge"] == 0
    workers = {w for w in client.run(os.getpid).values()}
    assert len(workers) == 2


def test_screen_can_keep_methyl_rotamers_apart(tmp_path, client):
    (tmp_path / "lib.smi").write_text("CCO ethanol\n")
    settings = dataclasses.replace(FAST, merge_rotamers=False)
    assert screen(tmp_path / "lib.smi", tmp_path / "out", settings, client=client)[0]["status"] == "done"
    summary = json.loads((tmp_path / "out" / "ethanol" / "summary.json").read_text())
    assert summary["merge_top_rotamers"] is False and summary["settings"]["merge_rotamers"] is False


def test_screen_can_keep_rings_unflipped(tmp_path, client):
    (tmp_path / "lib.smi").write_text("CC1CCCCC1 methylcyclohexane\nCCO ethanol\n")
    settings = dataclasses.replace(FAST, ring_flips=False)
    rows = screen(tmp_path / "lib.smi", tmp_path / "out", settings, client=client)
    assert [r["status"] for r in rows] == ["done", "done"]
    (tmp_path / "lib2.smi").write_text("CC1CCCCC1 methylcyclohexane\n")
    assert screen(tmp_path / "lib2.smi", tmp_path / "out2", FAST, client=client)[0]["status"] == "done"
    flips = {(out, name): json.loads((tmp_path / out / name / "summary.json").read_text())["ring_flips"]
             for out, name in (("out", "methylcyclohexane"), ("out", "ethanol"),
                               ("out2", "methylcyclohexane"))}
    # on by default where there is a puckered ring; never on without one
    assert flips == {("out", "methylcyclohexane"): False, ("out", "ethanol"): False,
                     ("out2", "methylcyclohexane"): True}


def test_a_pyscf_screen_takes_each_molecules_own_charge(tmp_path, client):
    (tmp_path / "lib.smi").write_text("C[NH3+] methylammonium\nCO methanol\n")
    settings = dataclasses.replace(FAST, calc="pyscf", method="hf", basis="sto-3g",
                                   walkers=2, max_calls=30)
    rows = screen(tmp_path / "lib.smi", tmp_path / "out", settings, client=client)
    assert [r["status"] for r in rows] == ["done", "done"], rows
    charges = {name: json.loads((tmp_path / "out" / name / "summary.json").read_text())["charge"]
               for name in ("methylammonium", "methanol")}
    assert charges == {"methylammonium": 1, "methanol": 0}


def test_bad_molecules_are_recorded_and_the_others_finish(tmp_path, client):
    (tmp_path / "lib.smi").write_text("CCO ethanol\nC1CC( broken\nCCCl chloropropane\n"
                                      "C[NH3+] methylammonium\nOCCO ethanediol\n")
    rows = {r["name"]: r for r in screen(tmp_path / "lib.smi", tmp_path / "out", FAST,
                                         client=client)}
    assert rows["ethanol"]["status"] == rows["ethanediol"]["status"] == "done"
    assert rows["broken"]["status"] == "failed" and "invalid SMILES" in rows["broken"]["reason"]
    assert rows["chloropropane"]["status"] == "failed" and "Cl" in rows["chloropropane"]["reason"]
    assert rows["methylammonium"]["status"] == "failed"
    assert "neutral molecules" in rows["methylammonium"]["reason"]
    table = rows_of(tmp_path / "out")
    assert table["broken"]["status"] == "failed" and "invalid SMILES" in table["broken"]["reason"]
    assert not (tmp_path / "out" / "broken").exists()


def test_worker_lost_mid_task_is_retried_elsewhere(tmp_path, client):
    (tmp_path / "lib.smi").write_text(FOUR)
    slow = ScreenSettings(walkers=4, max_calls=2500, device="cpu")
    done = {}
    thread = threading.Thread(target=lambda: done.update(rows=screen(
        tmp_path / "lib.smi", tmp_path / "out", slow, client=client)))
    thread.start()
    t0 = time.time()
    while not any(client.processing().values()):
        assert time.time() - t0 < 120
        time.sleep(0.05)
    time.sleep(1.0)
    victim = next(w for w, keys in client.processing().items() if keys)
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)                       # the worker dies mid-task
    thread.join(timeout=600)
    assert [r["status"] for r in done["rows"]] == ["done"] * 4
    client.wait_for_workers(2, timeout=60)


def test_read_library_kinds(tmp_path):
    (tmp_path / "a.smi").write_text("# comment\nCCO\nCCO ethanol\nCCO ethanol\n")
    names = [m.name for m in read_library(tmp_path / "a.smi")]
    assert names == ["mol00002", "ethanol", "ethanol_2"]
    folder = tmp_path / "structures"
    folder.mkdir()
    from ase.build import molecule
    from ase.io import write
    write(folder / "water.xyz", molecule("H2O"))
    write(folder / "methane.xyz", molecule("CH4"))
    assert [m.name for m in read_library(folder)] == ["methane", "water"]
    from ecd_chem.structures import from_smiles, write_ensemble
    frames = from_smiles("CCO", conformers=1) + from_smiles("OCCO", conformers=1)
    for f, name in zip(frames, ["eth", "diol"]):
        f.info.update(energy=0.0, name=name)
    write_ensemble(tmp_path / "lib.sdf", frames)
    assert [m.name for m in read_library(tmp_path / "lib.sdf")] == ["eth", "diol"]
    for bad in (tmp_path / "none.smi", tmp_path / "empty.smi", tmp_path / "x.csv"):
        if bad.name != "none.smi":
            bad.write_text("")
        with pytest.raises(InputError):
            read_library(bad)


def cli(*args, cwd, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "ecd_chem.cli", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_interrupted_screen_resumes_and_runs_every_molecule_once(tmp_path):
    (tmp_path / "lib.smi").write_text(FOUR + "CC(=O)OC methyl_acetate\nCOCCO methoxyethanol\n")
    args = ["screen", "lib.smi", "--out", "out", "--workers", "1", "--max-calls", "1500",
            "--walkers", "4", "--device", "cpu"]
    proc = cli(*args, cwd=tmp_path)
    log = tmp_path / "out" / "screen.log"
    t0 = time.time()
    while not (log.exists() and log.read_text().count("done") >= 1):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < 300
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    table = rows_of(tmp_path / "out")
    first = {n for n, r in table.items() if r["status"] == "done"}
    assert first and "pending" in {r["status"] for r in table.values()}
    tokens = {n: json.loads((tmp_path / "out" / n / "summary.json").read_text())["run_id"]
              for n in os.listdir(tmp_path / "out") if (tmp_path / "out" / n / "summary.json").exists()}
    lines_before = len(log.read_text().splitlines())

    resumed = cli(*args[:5], "2", *args[6:], cwd=tmp_path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"{len(tokens)} already done" in err
    table = rows_of(tmp_path / "out")
    assert len(table) == 6 and {r["status"] for r in table.values()} == {"done"}
    for name, token in tokens.items():              # finished before: not run again
        summary = json.loads((tmp_path / "out" / name / "summary.json").read_text())
        assert summary["run_id"] == token
    again = [line.split()[-1] for line in log.read_text().splitlines()[lines_before:]]
    assert sorted(again) == sorted(set(table) - set(tokens))    # each remaining one once


def test_cli_screen_bad_library(tmp_path):
    proc = cli("screen", "nothing.smi", "--out", "out", cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
