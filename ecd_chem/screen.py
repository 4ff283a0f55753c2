"""Many molecules: one conformer search each, scheduled by Dask distributed.

:func:`read_library` turns a ``.smi`` file (SMILES and optional name per
line), an SDF (one record per molecule) or a folder of structure files into
:class:`Molecule` entries. :func:`screen` submits one :func:`search_molecule`
task per molecule not already done to a Dask cluster -- a ``LocalCluster``
started in-process by default, or an existing scheduler -- and keeps
``DIR/summary.csv`` current (rewritten at most every 2 s and at the end;
``DIR/screen.log`` gets a line per finished molecule). Each molecule's results go
to ``DIR/<name>/`` (the conformer ensemble and the JSON summary), written in a
temporary folder and renamed into place, so a folder that exists is complete
and a rerun skips it. A worker lost mid-task has its molecule retried on
another worker by Dask; a molecule that cannot be searched (bad SMILES,
element outside the model, SCF failure) is recorded as failed with the reason.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass

from .structures import InputError, atomic_write, remove_stale_temps, sdf_records, temp_prefix

SUMMARY_FIELDS = ("name", "status", "reason", "lowest_energy_eV", "conformers", "force_calls",
                  "wall_time_s", "source")
SUMMARY_EVERY_S = 2.0           # summary.csv rewrite period; screen.log gets every completion
STRUCTURE_SUFFIXES = (".xyz", ".extxyz", ".sdf", ".mol", ".pdb", ".traj", ".cif")


@dataclass(frozen=True)
class Molecule:
    """One library entry: ``kind`` 'smiles' (text = SMILES), 'file' (text =
    path) or 'molblock' (text = one V2000 record)."""
    name: str
    kind: str
    text: str

    @property
    def source(self) -> str:
        return self.text if self.kind != "molblock" else "sdf record"


@dataclass(frozen=True)
class ScreenSettings:
    """What every search of a screen shares (the ``conformers`` options)."""
    calc: str = "ani1x"
    method: str = "b3lyp"
    basis: str = "def2-svp"
    charge: int | None = None         # None: each molecule's formal charges
    spin: int = 0
    device: str = "auto"
    walkers: int = 8
    max_calls: int = 5000
    ewin: float = 6.0
    rmsd: float = 0.125
    temperature: float = 298.15
    seed: int = 0
    merge_rotamers: bool = True
    ring_flips: bool = True
    output: str = "conformers.xyz"


def safe_name(name: str) -> str:
    """A folder name: letters, digits, '-', '_', '.', at most 100 characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return name[:100] or "molecule"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def read_library(path) -> list[Molecule]:
    """Molecules of a .smi file, an SDF or a folder of structure files; a bad
    entry is kept (it fails on its own when searched), an unreadable library
    raises InputError."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(STRUCTURE_SUFFIXES))
        if not files:
            raise InputError(f"{path}: no structure files ({', '.join(STRUCTURE_SUFFIXES)})")
        names = _unique([safe_name(os.path.splitext(f)[0]) for f in files])
        return [Molecule(n, "file", os.path.join(path, f)) for n, f in zip(names, files)]
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file or folder")
    with open(path) as fh:
        text = fh.read()
    lower = path.lower()
    if lower.endswith((".smi", ".smiles", ".txt")):
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            name = " ".join(fields[1:]) or f"mol{number:05d}"
            entries.append((safe_name(name), fields[0]))
        molecules = [Molecule(n, "smiles", s)
                     for n, (_, s) in zip(_unique([n for n, _ in entries]), entries)]
    elif lower.endswith((".sdf", ".sd")):
        records = sdf_records(text)
        titles = [r[0].strip() or f"mol{k:05d}" for k, r in enumerate(records, 1)]
        molecules = [Molecule(n, "molblock", "\n".join(r))
                     for n, r in zip(_unique([safe_name(t) for t in titles]), records)]
    else:
        raise InputError(f"{path}: a library is a .smi file, an .sdf file or a folder")
    if not molecules:
        raise InputError(f"{path}: no molecules in the library")
    return molecules


def load(molecule: Molecule, settings: ScreenSettings):
    """(atoms, starts) of a library entry; InputError when it is unusable."""
    from .structures import check_atoms, from_smiles, parse_molblock, read_structure
    if molecule.kind == "smiles":
        starts = from_smiles(molecule.text, conformers=settings.walkers, seed=settings.seed)
        return starts[0], starts
    if molecule.kind == "file":
        return read_structure(molecule.text), None
    try:
        atoms = parse_molblock(molecule.text.split("\n"))
    except (ValueError, IndexError) as err:
        raise InputError(f"not a valid V2000 record ({err})") from None
    check_atoms(atoms, molecule.name)
    return atoms, None


def search_molecule(molecule: Molecule, settings: ScreenSettings, out: str) -> dict:
    """One conformer search (runs on a Dask worker): writes ``out/<name>/`` and
    returns its summary.csv row. Failures become a 'failed' row with the reason."""
    import torch

    from . import ConformerSearch
    from .calculators import make_calculator
    torch.set_num_threads(1)           # one compute thread per worker
    t0 = time.perf_counter()
    row = {"name": molecule.name, "source": molecule.source}
    try:
        atoms, starts = load(molecule, settings)
        calc = make_calculator(settings.calc, atoms, method=settings.method, basis=settings.basis,
                               charge=settings.charge, spin=settings.spin, device=settings.device)
        search = ConformerSearch(atoms, calc, walkers=settings.walkers,
                                 max_force_calls=settings.max_calls, seed=settings.seed,
                                 starts=starts, energy_window=settings.ewin,
                                 rmsd_threshold=settings.rmsd, temperature=settings.temperature,
                                 merge_top_rotamers=settings.merge_rotamers,
                                 ring_flips=settings.ring_flips)
        result = search.run()
    except (ValueError, RuntimeError, ImportError, OSError) as err:   # InputError, SCF, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return {**row, "status": "failed", "reason": reason,
                "wall_time_s": round(time.perf_counter() - t0, 3)}
    wall = time.perf_counter() - t0
    summary = {"name": molecule.name, "input": molecule.source, "settings": asdict(settings),
               "run_id": uuid.uuid4().hex,
               "charge": getattr(calc, "charge", 0),   # PySCF's, resolved per molecule; else 0
               "kind": search.kind, "merge_top_rotamers": search.merge_top_rotamers,
               "ring_flips": search.ring_flips,
               **result.to_dict(), "wall_time_s": wall}
    final = os.path.join(out, molecule.name)
    remove_stale_temps(out, molecule.name)      # a killed worker's half-written folder
    tmp = tempfile.mkdtemp(dir=out, prefix=temp_prefix(molecule.name))
    try:
        result.write(os.path.join(tmp, settings.output))
        with open(os.path.join(tmp, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
        os.rename(tmp, final)          # atomic: the folder appears complete or not at all
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(final, "summary.json")):
            raise
    return {**row, **row_of(summary), "status": "done"}


def row_of(summary: dict) -> dict:
    return {"name": summary["name"], "status": "done", "reason": "",
            "lowest_energy_eV": summary["conformers"][0]["energy_eV"],
            "conformers": len(summary["conformers"]), "force_calls": summary["force_calls"],
            "wall_time_s": round(summary["wall_time_s"], 3), "source": summary["input"]}


def done_row(out: str, molecule: Molecule) -> dict | None:
    """The row of a molecule finished by an earlier run, else None."""
    path = os.path.join(out, molecule.name, "summary.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            return row_of(json.load(fh))
    except (ValueError, KeyError, IndexError):
        return None                    # unreadable: search it again


def write_summary(out: str, molecules: list[Molecule], rows: dict) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for m in molecules:
        writer.writerow(rows.get(m.name) or {"name": m.name, "status": "pending",
                                             "source": m.source})

    def write_to(tmp):
        with open(tmp, "w", newline="") as fh:
            fh.write(buffer.getvalue())
    atomic_write(os.path.join(out, "summary.csv"), write_to)


def start_client(workers: int | None = None, scheduler: str | None = None):
    """A Dask client: of the scheduler at ``scheduler``, or of a LocalCluster of
    ``workers`` single-threaded worker processes started here."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("ecd-chem screen needs Dask: pip install 'ecd-chem[screen]'") from None
    if scheduler:
        return Client(scheduler, timeout="20s")
    import importlib.util
    import logging
    dashboard = ":0" if importlib.util.find_spec("bokeh") else None
    cluster = LocalCluster(n_workers=int(workers or os.cpu_count() or 1), threads_per_worker=1,
                           processes=True, dashboard_address=dashboard,
                           silence_logs=logging.ERROR,
                           env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return Client(cluster)


def screen(library, out, settings: ScreenSettings = ScreenSettings(), *, workers=None,
           scheduler=None, client=None, report=None) -> list[dict]:
    """Search every molecule of ``library`` not yet done in ``out``; returns the
    summary rows in library order. ``report(text)`` hears about progress."""
    from distributed import as_completed
    report = report or (lambda text: None)
    molecules = read_library(library)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    rows = {m.name: done_row(out, m) for m in molecules}
    todo = [m for m in molecules if rows[m.name] is None]
    report(f"{len(molecules)} molecules, {len(molecules) - len(todo)} already done")
    write_summary(out, molecules, rows)
    if not todo:
        return [rows[m.name] for m in molecules]
    own = client is None
    client = client or start_client(workers, scheduler)
    try:
        if client.dashboard_link and (own or scheduler):
            report(f"Dask dashboard: {client.dashboard_link}")
        futures = {client.submit(search_molecule, m, settings, os.path.abspath(out),
                                 pure=False, key=f"ecd-search-{m.name}-{os.urandom(4).hex()}"): m
                   for m in todo}
        written = time.monotonic()
        for future in as_completed(futures):
            m = futures[future]
            try:
                row = future.result()
            except Exception as err:   # e.g. KilledWorker: lost on every worker tried
                row = {"name": m.name, "status": "failed", "source": m.source,
                       "reason": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            rows[m.name] = row
            if time.monotonic() - written > SUMMARY_EVERY_S:     # O(library) per write
                write_summary(out, molecules, rows)
                written = time.monotonic()
            with open(os.path.join(out, "screen.log"), "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {row['status']} {m.name}"
                         f"{' ' + row.get('reason', '') if row['status'] != 'done' else ''}\n")
            report(f"{m.name}: {row['status']}"
                   + (f" ({row.get('reason')})" if row["status"] != "done" else
                      f", lowest {row['lowest_energy_eV']:.6f} eV, {row['conformers']} conformers"))
    finally:
        write_summary(out, molecules, rows)
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
    return [rows[m.name] for m in molecules]
