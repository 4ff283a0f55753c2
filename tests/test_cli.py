"""ecd-chem through a subprocess, as a user runs it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ase.io import read

ROOT = Path(__file__).resolve().parent.parent
ETHANOL = str(ROOT / "molecules" / "ethanol.xyz")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ecd_chem.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_optimize_writes_structure_and_trajectory(tmp_path):
    out, traj = tmp_path / "min.xyz", tmp_path / "opt.traj"
    run = cli("optimize", ETHANOL, "-o", str(out), "--traj", str(traj), "--fmax", "0.01",
              "--quiet")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    final = read(out)
    frames = read(traj, ":")
    assert len(final) == 9 and len(frames) >= 2


def test_optimize_with_each_ani_model(tmp_path, ani_model):
    """Relaxed ethanol: ANI-1x -154.990 Ha, ANI-1ccx -154.892 Ha."""
    from ase.units import Hartree
    run = cli("optimize", ETHANOL, "-o", str(tmp_path / "min.xyz"), "--calc", ani_model,
              "--fmax", "0.02")
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("converged")
    energy = float(run.stderr.split("E = ")[1].split()[0]) / Hartree
    assert energy == pytest.approx({"ani1x": -154.990, "ani1ccx": -154.892}[ani_model], abs=1e-3)
    # "N force calls (start 1, ECD a, quench b)": the parts add up
    total = int(run.stderr.split(" force calls")[0].split()[-1])
    parts = run.stderr.split("(start ")[1].split(")")[0].replace(",", "").split()
    assert total == int(parts[0]) + int(parts[2]) + int(parts[4])


def test_optimize_from_smiles(tmp_path):
    """One ETKDG conformer of ethanol relaxed with ANI-1x, written where the
    formula says when no output is named."""
    run = cli("optimize", "--smiles", "CCO", "--calc", "ani1x", "--fmax", "0.02", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    relaxed = read(tmp_path / "C2H6O_opt.xyz")
    assert len(relaxed) == 9 and "wrote C2H6O_opt.xyz" in run.stderr


def test_optimize_xyz_trajectory_and_export(tmp_path):
    traj = tmp_path / "opt.xyz"
    assert cli("optimize", ETHANOL, "-o", str(tmp_path / "m.xyz"), "--traj", str(traj),
               "--calc", "ani1x", "--quiet").returncode == 0
    frames = read(traj, ":")
    for ext in ("extxyz", "traj", "pdb"):
        out = tmp_path / f"exported.{ext}"
        run = cli("export", str(traj), "-o", str(out))
        assert run.returncode == 0, run.stderr
        assert len(read(out, ":")) == len(frames)


def test_conformers_from_file_with_json_summary(tmp_path):
    out, summary = tmp_path / "conf.xyz", tmp_path / "summary.json"
    run = cli("conformers", str(ROOT / "molecules" / "n-butane.xyz"), "-o", str(out),
              "--json", str(summary), "--walkers", "8", "--max-calls", "1000", "--quiet")
    assert run.returncode == 0, run.stderr
    data = json.loads(summary.read_text())
    for key in ("input", "calculator", "search", "seed", "force_calls", "wall_time_s",
                "conformers"):
        assert key in data
    assert data["search"]["kind"] == "molecule" and data["search"]["merge_top_rotamers"] is True
    energies = [c["energy_eV"] for c in data["conformers"]]
    assert energies == sorted(energies) and len(energies) >= 2
    assert data["force_calls"] <= 1000
    assert abs(sum(c["boltzmann_weight"] for c in data["conformers"]) - 1) < 1e-9
    frames = read(out, ":")
    assert len(frames) == len(energies)
    assert [c["frame"] for c in data["conformers"]] == list(range(len(frames)))


def test_conformers_prints_a_table_of_what_it_found(tmp_path):
    out = tmp_path / "conf.xyz"
    run = cli("conformers", str(ROOT / "molecules" / "n-butane.xyz"), "-o", str(out),
              "--walkers", "2", "--max-calls", "400")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    header = lines.index("rank  dE (kcal/mol)  weight  visits  found at call")
    rows = [line.split() for line in lines[header + 1:-1]]
    frames = read(out, ":")
    assert len(rows) == len(frames) >= 2
    assert [int(r[0]) for r in rows] == list(range(1, len(frames) + 1)) and rows[0][1] == "0.000"
    assert sum(float(r[2].rstrip("%")) for r in rows) == pytest.approx(100, abs=0.1 * len(rows))
    assert lines[-1].startswith(f"{len(frames)} conformers, lowest")


def test_keep_rotamers_reaches_the_search(tmp_path):
    summary = tmp_path / "summary.json"
    run = cli("conformers", str(ROOT / "molecules" / "n-butane.xyz"), "-o",
              str(tmp_path / "conf.xyz"), "--json", str(summary),
              "--walkers", "2", "--max-calls", "60", "--keep-rotamers", "--quiet")
    assert run.returncode == 0, run.stderr
    assert json.loads(summary.read_text())["search"]["merge_top_rotamers"] is False


@pytest.mark.parametrize("flag, flips", [((), True), (("--keep-rings",), False)])
def test_keep_rings_reaches_the_search(tmp_path, flag, flips):
    summary = tmp_path / "summary.json"
    run = cli("conformers", str(ROOT / "molecules" / "methylcyclohexane_axial.xyz"), "-o",
              str(tmp_path / "conf.xyz"), "--json", str(summary),
              "--walkers", "2", "--max-calls", "60", "--quiet", *flag)
    assert run.returncode == 0, run.stderr
    assert json.loads(summary.read_text())["search"]["ring_flips"] is flips


def test_conformers_from_smiles(tmp_path):
    out = tmp_path / "diol.xyz"
    run = cli("conformers", "--smiles", "OCCO", "-o", str(out), "--max-calls", "800",
              "--walkers", "4", "--quiet")
    assert run.returncode == 0, run.stderr
    assert read(out, ":")[0].get_chemical_formula() == "C2H6O2"


def test_a_cations_charge_comes_from_its_smiles(tmp_path):
    summary = tmp_path / "summary.json"
    run = cli("conformers", "--smiles", "C[NH3+]", "-o", str(tmp_path / "conf.xyz"),
              "--json", str(summary), "--calc", "pyscf", "--method", "hf", "--basis", "sto-3g",
              "--walkers", "2", "--max-calls", "30", "--quiet")
    assert run.returncode == 0, run.stderr
    assert json.loads(summary.read_text())["calculator"]["charge"] == 1


@pytest.mark.parametrize("args, message", [
    (["optimize", "missing.xyz"], "no such file"),
    (["conformers", "--smiles", "C1CC("], "invalid SMILES"),
    (["optimize", ETHANOL, "--fmax", "0"], "must be > 0"),
    (["optimize", "--smiles", "C1CC("], "invalid SMILES"),
    (["optimize", ETHANOL, "--smiles", "CCO"], "not allowed with"),
    (["conformers", ETHANOL, "--walkers", "-2"], "must be > 0"),
    (["conformers", ETHANOL, "--temperature", "-5"], "must be >= 0"),
    (["conformers", ETHANOL, "--seed", "-1"], "must be >= 0"),
    (["conformers", "--smiles", "C[NH3+]"], "ani1x describes neutral molecules"),
    (["optimize", ETHANOL, "--charge", "1"], "charge and spin are PySCF settings"),
    (["optimize", ETHANOL, "-o", "/nonexistent-dir/x.xyz"], "does not exist"),
    (["optimize", ETHANOL, "--calc", "pyscf", "--charge", "1"], "impossible"),
    (["optimize", ETHANOL, "--calc", "pyscf", "--basis", "nonsense-basis"], "unknown basis"),
    (["optimize", ETHANOL, "--calc", "pyscf", "--method", "b3lypp"], "unknown PySCF method"),
    (["optimize", ETHANOL, "--device", "cuda"], "CUDA"),
    (["frobnicate"], "invalid choice"),
    (["conformers", str(ROOT / "molecules" / "n-butane.xyz"), "--calc", "emt", "--walkers", "2",
      "--max-calls", "60"], "input's bonds"),
])
def test_bad_input_one_line_exit_2(args, message, tmp_path):
    if args[-1] == "cuda":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: the error cannot occur")
    run = cli(*args, cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in run.stderr
    assert os.listdir(tmp_path) == []                   # no partial output left behind


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("3\ncomment\nO 0 0 0\nH 0 0 x\n", "cannot read"),
    ("2\ncomment\nQq 0 0 0\nH 0 0 1\n", "cannot read"),
    ("2\ncomment\nH 0 0 0\nH 0 0 0.1\n", "closer than 0.3"),
    ("2\ncomment\nH 0 0 nan\nH 0 0 1\n", "finite"),
])
def test_bad_structure_files(content, message, tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text(content)
    run = cli("optimize", str(path), "-o", str(tmp_path / "out.xyz"))
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.xyz").exists()


def test_element_outside_ani_model(tmp_path):
    path = tmp_path / "mecl.xyz"
    path.write_text("2\n\nC 0 0 0\nCl 0 0 1.78\n")
    run = cli("optimize", str(path), "-o", str(tmp_path / "o.xyz"))
    assert run.returncode == 2 and "Cl" in run.stderr and "supported" in run.stderr


def test_help_has_worked_examples():
    for command in ("optimize", "conformers", "export"):
        run = cli(command, "--help")
        assert run.returncode == 0 and "example: ecd-chem" in run.stdout


def test_sdf_input_keeps_bonds_in_sdf_output(tmp_path):
    Chem = pytest.importorskip("rdkit.Chem")
    from ecd_chem.structures import from_smiles, write_ensemble
    start = from_smiles("C=CC(=O)O", conformers=1)[0]             # acrylic acid: double bonds
    start.info["energy"] = 0.0
    write_ensemble(tmp_path / "in.sdf", [start])
    out = tmp_path / "conf.sdf"
    run = cli("conformers", str(tmp_path / "in.sdf"), "-o", str(out), "--max-calls", "600",
              "--walkers", "4", "--quiet")
    assert run.returncode == 0, run.stderr
    mols = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
    assert len(mols) >= 1 and all(m is not None for m in mols)
    assert {Chem.MolToSmiles(Chem.RemoveHs(m)) for m in mols} == {"C=CC(=O)O"}
    for sdf in (tmp_path / "in.sdf", out):          # the V2000 dimension code, columns 21-22
        assert sdf.read_text().splitlines()[1][20:22] == "3D"
    energies = [float(m.GetProp("energy_eV")) for m in mols]
    assert energies == sorted(energies)
    assert [int(m.GetProp("rank")) for m in mols] == list(range(1, len(mols) + 1))


def test_smiles_search_writes_sdf_with_bonds(tmp_path):
    Chem = pytest.importorskip("rdkit.Chem")
    out = tmp_path / "diol.sdf"
    run = cli("conformers", "--smiles", "OCCO", "-o", str(out), "--max-calls", "400",
              "--walkers", "4", "--quiet")
    assert run.returncode == 0, run.stderr
    mol = next(iter(Chem.SDMolSupplier(str(out), removeHs=False)))
    assert mol.GetNumBonds() == 9 and Chem.MolToSmiles(Chem.RemoveHs(mol)) == "OCCO"


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "opt.png"
    run = cli("optimize", ETHANOL, "-o", str(tmp_path / "m.xyz"), "--plot", str(png), "--quiet")
    assert run.returncode == 0, run.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = tmp_path / "search.png"
    run = cli("conformers", str(ROOT / "molecules" / "n-butane.xyz"), "-o",
              str(tmp_path / "c.xyz"), "--max-calls", "400", "--plot", str(png), "--quiet")
    assert run.returncode == 0, run.stderr
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_plot_needs_an_image_name(tmp_path):
    run = cli("optimize", ETHANOL, "--plot", "energy.txt", cwd=tmp_path)
    assert run.returncode == 2 and "--plot" in run.stderr
    assert os.listdir(tmp_path) == []


def run_on_terminal(*args, cwd):
    """Run the CLI with stderr on a pseudo-terminal; returns (status, stderr text)."""
    import pty
    import threading
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ecd_chem.cli", *args], stdout=subprocess.PIPE,
                            stderr=slave, cwd=cwd)
    os.close(slave)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=drain)
    reader.start()
    status = proc.wait(timeout=600)
    reader.join(timeout=10)
    os.close(master)
    proc.stdout.close()
    return status, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_terminal_only(quiet, tmp_path):
    args = ["conformers", str(ROOT / "molecules" / "n-butane.xyz"), "-o", "c.xyz",
            "--max-calls", "600", "--calc", "ani1x"] + (["--quiet"] if quiet else [])
    status, text = run_on_terminal(*args, cwd=tmp_path)
    assert status == 0, text
    if quiet:
        assert text == ""
    else:
        assert "\r" in text and "force calls" in text and "lowest" in text and "minima" in text
    piped = cli(*args[:-1] if quiet else args, cwd=tmp_path)        # stderr is a pipe
    assert piped.returncode == 0 and "\r" not in piped.stderr and "[" not in piped.stderr


def test_optimize_progress_and_log(tmp_path):
    status, text = run_on_terminal("optimize", ETHANOL, "-o", "m.xyz", "--log", "opt.log",
                                   cwd=tmp_path)
    assert status == 0 and "max|F|" in text and "\r" in text
    log = (tmp_path / "opt.log").read_text().splitlines()
    assert log[0].split()[:2] == ["Step", "Time"] and len(log) >= 3


def test_export_to_sdf(tmp_path):
    traj = tmp_path / "opt.traj"
    assert cli("optimize", ETHANOL, "-o", str(tmp_path / "m.xyz"), "--traj", str(traj),
               "--quiet").returncode == 0
    run = cli("export", str(traj), "-o", str(tmp_path / "opt.sdf"))
    assert run.returncode == 0, run.stderr
    text = (tmp_path / "opt.sdf").read_text()
    assert text.count("$$$$") == len(read(traj, ":")) and "V2000" in text
