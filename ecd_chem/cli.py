"""``ecd-chem``: optimize, conformers, export, screen. Thin over ECDOpt,
ConformerSearch and :mod:`ecd_chem.screen`.

Exit status: 0 done; 1 optimize not converged or some molecules of a screen
failed; 2 bad input or usage (one line on stderr, no traceback); 130 after
Ctrl-C or SIGTERM, once everything found so far is written.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import time

from .calculators import CALCULATORS

EXAMPLES = {
    "optimize": "example: ecd-chem optimize molecules/ethanol.xyz -o ethanol_min.xyz "
                "--traj opt.traj --fmax 0.01",
    "conformers": "example: ecd-chem conformers --smiles 'OCCO' -o conformers.xyz "
                  "--json summary.json --walkers 8 --max-calls 2000",
    "export": "example: ecd-chem export opt.traj -o opt.xyz",
    "screen": "example: ecd-chem screen molecules/library.smi --out screen-out --workers 2 "
              "--max-calls 1500",
    "fetch-models": "example: ecd-chem fetch-models   (once, at set-up; then --calc ani1ccx "
                    "runs offline)",
}


class UsageError(Exception):
    pass


class Progress:
    """One self-overwriting status line on stderr, at most ``rate`` redraws per
    second; silent with --quiet or when stderr is not a terminal."""

    def __init__(self, quiet=False, rate=10.0, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.period, self.last, self.width = 1 / rate, 0.0, 0
        self.t0 = time.perf_counter()

    def update(self, text, force=False):
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last < self.period):
            return
        self.last = now
        line = f"{text} | {now - self.t0:.0f} s"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def close(self):
        if self.enabled and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0

    @staticmethod
    def bar(fraction, width=24):
        filled = int(round(max(0.0, min(1.0, fraction)) * width))
        return "[" + "#" * filled + "-" * (width - filled) + "]"


class Parser(argparse.ArgumentParser):
    def error(self, message):            # argparse would print usage + exit 2 itself
        raise UsageError(message)


def positive(kind, or_zero=False):
    def convert(text):
        value = kind(text)
        if not (value >= 0 if or_zero else value > 0):
            raise argparse.ArgumentTypeError(f"must be {'>=' if or_zero else '>'} 0, got {text}")
        return value
    convert.__name__ = kind.__name__
    return convert


def add_calculator_options(p):
    g = p.add_argument_group("calculator")
    g.add_argument("--calc", choices=CALCULATORS, default="ani1x")
    g.add_argument("--method", default="b3lyp", help="PySCF method (hf, mp2, any functional)")
    g.add_argument("--basis", default="def2-svp", help="PySCF basis set")
    g.add_argument("--charge", type=int,
                   help="PySCF total charge (default: the structure's formal charges, from "
                        "SMILES or SDF)")
    g.add_argument("--spin", type=int, default=0, help="2S for PySCF")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=positive(int, or_zero=True), default=0,
                   help="random seed (kicks, bounces, starts)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw energy against force calls (needs matplotlib)")


def add_search_options(p):
    p.add_argument("--walkers", type=positive(int), default=8,
                   help="ECD walkers stepped together, one batched evaluation per step")
    p.add_argument("--max-calls", type=positive(int), default=5000,
                   help="budget of force calls, quenches and refinement included")
    p.add_argument("--ewin", type=positive(float), default=6.0, help="energy window, kcal/mol")
    p.add_argument("--rmsd", type=positive(float), default=0.125, help="duplicate RMSD, A")
    p.add_argument("--temperature", type=positive(float, or_zero=True), default=298.15,
                   help="K, Boltzmann weights (0: all weight on the lowest)")
    p.add_argument("--keep-rotamers", action="store_true",
                   help="report conformers that differ only in how a CH3/CF3-like top is "
                        "turned separately (default: merged, the lowest kept)")
    p.add_argument("--keep-rings", action="store_true",
                   help="do not flip rings: explore in torsion space, each ring keeping the "
                        "pucker of its start (e.g. with --smiles, whose starts sample rings)")


def add_input_options(p, smiles_help: str):
    """A structure file or --smiles, exactly one of them."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("input", nargs="?",
                        help="structure file (.xyz, .extxyz, .sdf, .mol, .pdb, ...)")
    source.add_argument("--smiles", help=smiles_help)


def build_parser():
    parser = Parser(prog="ecd-chem", description="Energy-Conserving Descent for molecules.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("optimize", help="relax a structure with ECDOpt",
                       epilog=EXAMPLES["optimize"])
    add_input_options(p, "start from an RDKit ETKDG conformer of this molecule")
    p.add_argument("-o", "--output",
                   help="final structure (default INPUT-stem_opt.xyz, or FORMULA_opt.xyz)")
    p.add_argument("--traj", help="trajectory file (.traj, .xyz, .extxyz)")
    p.add_argument("--fmax", type=positive(float), default=0.05, help="eV/A")
    p.add_argument("--steps", type=positive(int), default=1000)
    p.add_argument("--log", help="ASE optimizer log, one line per step ('-' for stdout)")
    add_calculator_options(p)

    p = sub.add_parser("conformers", help="conformer / global-minimum search",
                       epilog=EXAMPLES["conformers"])
    add_input_options(p, "start from RDKit ETKDG conformers of this molecule")
    p.add_argument("-o", "--output", default="conformers.xyz")
    p.add_argument("--json", help="machine-readable summary")
    add_search_options(p)
    p.add_argument("--checkpoint", help="resume from / save to this JSON file")
    add_calculator_options(p)

    p = sub.add_parser("screen", help="a conformer search per molecule of a library, on Dask",
                       epilog=EXAMPLES["screen"])
    p.add_argument("library", help=".smi (SMILES [name] per line), .sdf, or a folder of structures")
    p.add_argument("--out", required=True, help="folder: <name>/ per molecule, summary.csv")
    p.add_argument("--workers", type=positive(int), help="LocalCluster workers (default: cores)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--format", choices=["xyz", "extxyz", "sdf"], default="xyz",
                   help="conformer file format in each molecule's folder")
    add_search_options(p)
    add_calculator_options(p)

    p = sub.add_parser("fetch-models", help="install ANI-1ccx's network files once (the "
                       "torchani 2.2.4 wheel ships them empty)", epilog=EXAMPLES["fetch-models"])
    p.add_argument("--dir", help="where (default: $ECD_CHEM_ANI_DIR, else share/ecd_chem/ani "
                                 "in this Python environment)")
    p.add_argument("--wheel", help="a torchani-2.0-py3-none-any.whl already downloaded, for a "
                                   "machine without the package index")

    p = sub.add_parser("export", help="convert a trajectory or ensemble",
                       epilog=EXAMPLES["export"])
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="format from the extension")
    return parser


def make_calculator(args, atoms):
    from .calculators import make_calculator as by_name
    return by_name(args.calc, atoms, method=args.method, basis=args.basis, charge=args.charge,
                   spin=args.spin, device=args.device)


def check_output(path):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"output directory does not exist: {directory}")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"output directory is not writable: {directory}")


def check_plot(path):
    if path:
        if not path.lower().endswith((".png", ".pdf", ".svg")):
            raise UsageError(f"--plot needs a .png, .pdf or .svg file name, got {path}")
        check_output(path)
        from .plot import _pyplot
        _pyplot()                    # matplotlib missing: say so before any work


def cmd_optimize(args):
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from . import ECDOpt
    from .structures import from_smiles, read_structure, write_structures
    if args.smiles is not None:
        atoms = from_smiles(args.smiles, conformers=1, seed=args.seed)[0]
        name = args.smiles
        stem = atoms.get_chemical_formula()
    else:
        atoms = read_structure(args.input)
        name = os.path.basename(args.input)
        stem = os.path.splitext(name)[0]
    output = args.output or stem + "_opt.xyz"
    for path in filter(None, (output, args.traj, None if args.log == "-" else args.log)):
        check_output(path)
    check_plot(args.plot)
    atoms.calc = make_calculator(args, atoms)
    traj = args.traj if args.traj and args.traj.endswith(".traj") else None
    opt = ECDOpt(atoms, logfile=args.log, trajectory=traj, seed=args.seed)
    frames, records = [], []
    progress = Progress(args.quiet)

    def observe():
        forces = atoms.get_forces()
        energy, fmax = atoms.get_potential_energy(), float(np.linalg.norm(forces, axis=1).max())
        ecd_before = records[-1][4] if records else 0
        phase = "start" if not records else ("ecd" if opt.ecd_calls > ecd_before else "quench")
        records.append((opt.nsteps + 1, energy, fmax, phase, opt.ecd_calls))
        if args.traj and not traj:
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
            frames.append(frame)
        progress.update(f"optimize {opt.nsteps + 1} force calls ({phase}) | E {energy:.6f} eV "
                        f"| max|F| {fmax:.4f} eV/A (target {args.fmax})")

    opt.attach(observe, interval=1)
    try:
        converged = opt.run(fmax=args.fmax, steps=args.steps)
    finally:                          # the frames so far are kept, also after a failure
        progress.close()
        opt.close()
        if frames:
            write_structures(args.traj, frames)
        if args.plot and len(records) > 1:
            from .plot import plot_optimization
            plot_optimization([r[:4] for r in records], args.plot,
                              title=f"ECDOpt: {name}")
    write_structures(output, atoms)
    if not args.quiet:
        print(f"{'converged' if converged else 'NOT converged'}: E = "
              f"{atoms.get_potential_energy():.6f} eV, {opt.nsteps + 1} force calls "
              f"(start 1, ECD {opt.ecd_calls}, quench {opt.quench_calls}); wrote {output}",
              file=sys.stderr)
    return 0 if converged else 1


def calculator_settings(args, calc) -> dict:
    return {"name": args.calc, "device": args.device, **(
        {"method": args.method, "basis": args.basis, "charge": calc.charge, "spin": calc.spin}
        if args.calc == "pyscf" else {})}


def search_settings(args, search) -> dict:
    return {"walkers": args.walkers, "max_force_calls": args.max_calls,
            "energy_window_kcal_mol": args.ewin, "rmsd_threshold_A": args.rmsd,
            "temperature_K": args.temperature, "kind": search.kind,
            "merge_top_rotamers": search.merge_top_rotamers, "ring_flips": search.ring_flips}


def summary(args, calc, result, search, wall):
    return {"input": args.input or {"smiles": args.smiles},
            "calculator": calculator_settings(args, calc), "search": search_settings(args, search),
            "seed": args.seed, **result.to_dict(), "wall_time_s": wall}


def cmd_conformers(args):
    from . import ConformerSearch
    from .structures import atomic_write, from_smiles, read_structure
    for path in filter(None, (args.output, args.json, args.checkpoint)):
        check_output(path)
    check_plot(args.plot)
    if args.smiles is not None:
        starts = from_smiles(args.smiles, conformers=args.walkers, seed=args.seed)
        atoms = starts[0]
    else:
        atoms, starts = read_structure(args.input), None
    calc = make_calculator(args, atoms)
    search = ConformerSearch(atoms, calc, walkers=args.walkers, max_force_calls=args.max_calls,
                             seed=args.seed, starts=starts, energy_window=args.ewin,
                             rmsd_threshold=args.rmsd, temperature=args.temperature,
                             merge_top_rotamers=not args.keep_rotamers,
                             ring_flips=not args.keep_rings, checkpoint=args.checkpoint)
    progress = Progress(args.quiet)

    def report(s):
        progress.update(f"conformers {progress.bar(s.calls / s.max_force_calls)} {s.calls}/"
                        f"{s.max_force_calls} force calls | lowest {s.lowest:.6f} eV | "
                        f"{len(s.minima)} minima")
    search.attach(report)
    t0 = time.perf_counter()
    interrupted = False
    try:
        result = search.run()
    except KeyboardInterrupt:
        interrupted = True
        result = search.current_result()
    finally:
        progress.close()
    wall = time.perf_counter() - t0
    result.write(args.output)
    if args.plot:
        from .plot import plot_search
        name = args.smiles or os.path.basename(args.input)
        plot_search(result, args.plot, title=f"ECD conformer search: {name} ({args.calc})")
    if args.json:
        data = summary(args, calc, result, search, wall)
        data["interrupted"] = interrupted
        atomic_write(args.json, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(data, indent=1)))
    if not args.quiet:
        print(result.table(), file=sys.stderr)
        print(f"{len(result.conformers)} conformers, lowest {result.best.info['energy']:.6f} eV, "
              f"{result.force_calls} force calls (ECD {result.ecd_calls}, quench "
              f"{result.quench_calls}, refine {result.refine_calls}); wrote {args.output}",
              file=sys.stderr)
    return 130 if interrupted else 0


def cmd_export(args):
    from .structures import InputError, read_structures, write_structures
    check_output(args.output)
    frames = read_structures(args.input)
    ext = os.path.splitext(args.output)[1]
    try:
        write_structures(args.output, frames)
    except Exception as err:
        raise InputError(f"cannot write {ext or args.output!r}: {str(err).splitlines()[0]}") from None
    return 0


def cmd_fetch_models(args):
    from .calculators.ani_files import ani_data_dir, fetch_ani_files, installed
    target = args.dir or ani_data_dir()
    if args.wheel is None and installed(target):
        print(f"already installed in {target}", file=sys.stderr)
        return 0
    for path in fetch_ani_files(target, wheel=args.wheel):
        print(f"installed {path}", file=sys.stderr)
    return 0


def cmd_screen(args):
    from .screen import ScreenSettings, screen
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out must be a folder: {args.out} is a file")
    check_output(os.path.join(args.out, "summary.csv") if os.path.isdir(args.out) else args.out)
    if args.plot:
        raise UsageError("--plot is not available for screen (use conformers --plot per molecule)")
    settings = ScreenSettings(calc=args.calc, method=args.method, basis=args.basis,
                              charge=args.charge, spin=args.spin,
                              device=args.device,
                              walkers=args.walkers, max_calls=args.max_calls, ewin=args.ewin,
                              rmsd=args.rmsd, temperature=args.temperature, seed=args.seed,
                              merge_rotamers=not args.keep_rotamers,
                              ring_flips=not args.keep_rings,
                              output=f"conformers.{args.format}")
    def report(text):
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)
    rows = screen(args.library, args.out, settings, workers=args.workers,
                  scheduler=args.scheduler, report=report)
    failed = [r for r in rows if r["status"] != "done"]
    report(f"{len(rows) - len(failed)} done, {len(failed)} failed; "
           f"see {os.path.join(args.out, 'summary.csv')}")
    return 1 if failed else 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    import warnings
    if not os.environ.get("ECD_CHEM_WARNINGS"):      # library chatter off stderr
        warnings.simplefilter("ignore")
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        args = build_parser().parse_args(argv)
        handler = {"optimize": cmd_optimize, "conformers": cmd_conformers,
                   "export": cmd_export, "screen": cmd_screen,
                   "fetch-models": cmd_fetch_models}[args.command]
        return handler(args)
    except KeyboardInterrupt:
        print("ecd-chem: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, OSError, ImportError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"ecd-chem: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
