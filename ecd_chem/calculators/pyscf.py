"""PySCF (HF, DFT, MP2) as an ASE calculator built on PySCF's gradient scanner.

The scanner is built once and called per geometry; each SCF starts from the
previous geometry's density matrix (the warm start that makes ECD's many
nearby geometries cheap). Angstrom/eV outside, Bohr/Hartree inside: units
convert only in :meth:`PySCFCalculator.calculate`.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree

from ..structures import formal_charge
from .base import ASELoopModel


class SCFNotConverged(RuntimeError):
    """The SCF did not converge, even with a level shift and a second-order solver.

    ``symbols`` and ``positions`` (Angstrom) record the geometry that failed."""

    def __init__(self, message, symbols=None, positions=None):
        super().__init__(message)
        self.symbols = symbols
        self.positions = None if positions is None else np.array(positions)


def _import_pyscf():
    try:
        import pyscf  # noqa: F401
        from pyscf import dft, gto, scf
    except ImportError as err:  # pragma: no cover - pyscf is a hard dependency
        raise ImportError("PySCFCalculator needs PySCF: pip install pyscf") from err
    return gto, scf, dft


def _gpu_available() -> bool:
    try:
        import cupy  # noqa: F401
        import gpu4pyscf  # noqa: F401
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


class PySCFCalculator(Calculator):
    """Energies (eV), forces (eV/A) and free_energy from PySCF.

    method: 'hf', 'mp2' (RHF reference, closed shells), or any exchange-correlation
        functional libxc knows ('b3lyp', 'pbe0', 'wb97x-d', ...).
    basis: any basis PySCF knows ('sto-3g', 'def2-svp', ...).
    charge, spin: total charge and 2S; spin > 0 runs unrestricted (UHF/UKS).
    density_fit: use density fitting (RI-J/K).
    conv_tol, max_cycle, grid_level: SCF options; scf_options: more attributes set
        on the SCF object (e.g. {'diis_space': 12}).
    use_gpu: None picks gpu4pyscf when it and a CUDA device are present.
    warm_start: start each SCF from the previous geometry's density (False: a
        fresh initial guess every time, for comparison).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, method="hf", basis="sto-3g", charge=0, spin=0, density_fit=False,
                 conv_tol=1e-10, max_cycle=100, grid_level=3, scf_options=None,
                 use_gpu=None, warm_start=True, **kwargs):
        super().__init__(**kwargs)
        gto, _, dft = _import_pyscf()
        self.method = str(method).lower()
        if self.method not in ("hf", "mp2"):
            try:
                dft.libxc.parse_xc(self.method)
            except (KeyError, ValueError) as err:
                raise ValueError(f"unknown PySCF method {method!r}: not 'hf', 'mp2' or an "
                                 "exchange-correlation functional libxc knows") from err
        try:
            import warnings
            with warnings.catch_warnings():   # PySCF suggests an online basis library
                warnings.simplefilter("ignore")
                gto.basis.load(basis, "H") if isinstance(basis, str) else None
        except Exception as err:
            raise ValueError(f"unknown basis set {basis!r}") from err
        if int(spin) < 0:
            raise ValueError(f"spin (2S) must be >= 0, got {spin}")
        if self.method == "mp2" and spin:
            raise ValueError("method 'mp2' supports closed shells only (spin 0)")
        self.basis, self.charge, self.spin = basis, int(charge), int(spin)
        self.density_fit = bool(density_fit)
        self.conv_tol, self.max_cycle, self.grid_level = conv_tol, max_cycle, grid_level
        self.scf_options = dict(scf_options or {})
        self.use_gpu = _gpu_available() if use_gpu is None else bool(use_gpu)
        self.warm_start = bool(warm_start)
        self.scanner = None
        self.scf_cycles: list[int] = []     # SCF iterations of each geometry

    # -- building --------------------------------------------------------------------
    def build_mol(self, atoms):
        """A PySCF Mole for ``atoms``; a ValueError if charge and spin cannot be."""
        gto, _, _ = _import_pyscf()
        mol = gto.Mole()
        mol.atom = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)]
        mol.unit = "Angstrom"
        mol.basis, mol.charge, mol.spin, mol.verbose = self.basis, self.charge, self.spin, 0
        try:
            mol.build()
        except RuntimeError as err:
            raise ValueError(f"charge {self.charge} and spin {self.spin} are impossible for "
                             f"{atoms.get_chemical_formula()}: {str(err).splitlines()[0]}") from err
        except Exception as err:
            raise ValueError(f"PySCF cannot build {atoms.get_chemical_formula()} in basis "
                             f"{self.basis!r}: {err}") from err
        return mol

    def check(self, atoms):
        """Raise a clear ValueError now if this calculator cannot handle ``atoms``
        (also when the structure's formal charges say another charge)."""
        formal = formal_charge(atoms)
        if formal and formal != self.charge:
            raise ValueError(f"{atoms.get_chemical_formula()} carries a net formal charge of "
                             f"{formal:+d}, but the calculator's charge is {self.charge}")
        self.build_mol(atoms)

    def _mean_field(self, mol):
        _, scf, dft = _import_pyscf()
        open_shell = self.spin > 0
        if self.method in ("hf", "mp2"):
            mf = scf.UHF(mol) if open_shell else scf.RHF(mol)
        else:
            mf = dft.UKS(mol) if open_shell else dft.RKS(mol)
            mf.xc = self.method
            mf.grids.level = self.grid_level
        if self.density_fit:
            mf = mf.density_fit()
        if self.use_gpu:
            mf = mf.to_gpu()
        mf.conv_tol, mf.max_cycle = self.conv_tol, self.max_cycle
        for key, value in self.scf_options.items():
            setattr(mf, key, value)
        return mf

    def _make_scanner(self, mol, mean_field=None):
        mf = mean_field or self._mean_field(mol)
        if self.method == "mp2":
            return mf.MP2().nuc_grad_method().as_scanner()
        return mf.nuc_grad_method().as_scanner()

    @staticmethod
    def _scf_of(scanner):
        base = scanner.base
        return getattr(base, "_scf", base)

    # -- evaluation ------------------------------------------------------------------------
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        mol = self.build_mol(self.atoms)
        if self.scanner is None or not self.warm_start:
            self.scanner = self._make_scanner(mol)
        energy, gradient = self.scanner(mol)
        mf = self._scf_of(self.scanner)
        cycles = getattr(mf, "cycles", 0)
        if not mf.converged:
            energy, gradient, cycles = self._rescue(mol, cycles)
        self.scf_cycles.append(int(cycles))
        e = float(energy) * Hartree
        self.results = {"energy": e, "free_energy": e,
                        "forces": -np.asarray(gradient, dtype=float) * Hartree / Bohr}

    def _rescue(self, mol, cycles):
        """Retry a failed SCF with a level shift, then with a second-order solver,
        each allowed max(max_cycle, 50) iterations."""
        shifted = self._mean_field(mol)
        shifted.level_shift = 0.3
        attempts = [shifted, self._mean_field(mol).newton()]
        for mf in attempts:
            mf.max_cycle = max(self.max_cycle, 50)
        for mf in attempts:
            scanner = self._make_scanner(mol, mean_field=mf)
            energy, gradient = scanner(mol)
            cycles += getattr(self._scf_of(scanner), "cycles", 0)
            if self._scf_of(scanner).converged:
                self.scanner = None      # rebuild the plain scanner at the next geometry
                return energy, gradient, cycles
        raise SCFNotConverged(
            f"SCF did not converge for {self.atoms.get_chemical_formula()} "
            f"({self.method}/{self.basis}) even with level shift and second-order solver",
            symbols=self.atoms.get_chemical_symbols(), positions=self.atoms.positions)

    def copy_settings(self) -> dict:
        return dict(method=self.method, basis=self.basis, charge=self.charge, spin=self.spin,
                    density_fit=self.density_fit, conv_tol=self.conv_tol,
                    max_cycle=self.max_cycle, grid_level=self.grid_level,
                    scf_options=self.scf_options, use_gpu=self.use_gpu,
                    warm_start=self.warm_start)

    def batch_model(self) -> ASELoopModel:
        """The batched interface: one calculator, hence one warm scanner, per walker."""
        settings = self.copy_settings()
        return ASELoopModel(lambda: PySCFCalculator(**settings))
