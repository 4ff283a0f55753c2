"""TorchANI (ANI-1x, ANI-1ccx) as a batched model and an ASE calculator.

The networks are built from the NeuroChem files packaged inside the torchani
2.2.4 wheel, offline: its ``.info`` index files are empty, so the stock
``torchani.models.ANI1x()`` would try to download them. Its ANI-1ccx files are
empty too; ``ecd-chem fetch-models`` installs them once from the torchani 2.0
wheel (see :mod:`.ani_files`).
"""
from __future__ import annotations

import functools
import os

import torch
from ase import Atoms
from ase.units import Hartree

from ..structures import formal_charge
from .ani_files import CONSTANTS, MODELS, ani_data_dir, missing_files
from .base import BatchCalculator, BatchModel

class ANIUnavailable(RuntimeError):
    """The packaged network files for a model are missing or empty."""


SUPPORTED_ELEMENTS = ("H", "C", "N", "O")


def _import_torchani():
    import warnings
    try:
        with warnings.catch_warnings():   # "cuaev not installed", pkg_resources deprecation
            warnings.simplefilter("ignore")
            import torchani
    except ImportError as err:  # pragma: no cover - torchani is a hard dependency
        raise ImportError("ANI needs torchani 2.2.4: pip install 'torchani==2.2.4' "
                          "'setuptools<81'") from err
    return torchani


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device}; use 'auto', 'cpu' or 'cuda'")
    return device


@functools.lru_cache(maxsize=None)
def _load_network(name: str):
    """The ANI ensemble (AEV -> 8 networks -> self-energy shift), float32 on CPU,
    built once per process."""
    torchani = _import_torchani()
    from torchani import neurochem

    folder, size = MODELS[name]
    roots = [os.path.join(os.path.dirname(torchani.__file__), "resources", folder),
             os.path.join(ani_data_dir(), folder)]
    root = next((r for r in roots if not missing_files(r, size)), None)
    if root is None:
        raise ANIUnavailable(
            f"{name}: the network files packaged with this torchani install are missing or "
            f"empty ({missing_files(roots[0], size)[0]}), and none were installed in "
            f"{roots[1]}; install them once with `ecd-chem fetch-models`, which takes them "
            "from the torchani 2.0 wheel on the package index")
    consts = neurochem.Constants(os.path.join(root, CONSTANTS))
    aev = torchani.AEVComputer(**consts)
    shifter = neurochem.load_sae(os.path.join(root, "sae_linfit.dat"))
    ensemble = neurochem.load_model_ensemble(consts.species, os.path.join(root, "train"), size)
    network = torchani.nn.Sequential(aev, ensemble, shifter)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.eval(), tuple(consts.species)


@functools.lru_cache(maxsize=None)
def load_network(name: str, device: str, dtype: torch.dtype):
    """Cached copy of the network on ``device`` in ``dtype``."""
    network, species = _load_network(name)
    import copy
    network = copy.deepcopy(network).to(device=device, dtype=dtype)
    network[2].double()       # torchani's EnergyShifter writes float64 into its self energies
    return network, species


class ANIModel(BatchModel):
    """ANI energies (eV) and forces (eV/A) for W geometries in one pass.

    model: 'ani1x' or 'ani1ccx'; device: 'auto', 'cpu' or 'cuda';
    dtype: torch.float32 (fast) or torch.float64 (for finite differences).
    """

    #: :class:`BatchAEV` and :class:`BatchEnsemble` (True) or torchani's own
    #: AEVComputer and Ensemble (False): same numbers, the batched modules are
    #: faster for many conformers of one molecule.
    batched_modules = True

    def __init__(self, model: str = "ani1x", device="auto", dtype=torch.float32):
        if model not in MODELS:
            raise ValueError(f"unknown ANI model {model!r}; choose one of {sorted(MODELS)}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError("dtype must be torch.float32 or torch.float64")
        self.name = model
        self.device = resolve_device(device)
        self.dtype = dtype
        self.network, self.species = load_network(model, str(self.device), dtype)
        self._index = {s: i for i, s in enumerate(self.species)}
        from .aev import BatchAEV
        from .ensemble import BatchEnsemble
        self.aev = BatchAEV(self.network[0])
        self.ensemble = BatchEnsemble(self.network[1], self.species)
        self.self_energies = self.network[2].self_energies.to(self.device, torch.float64)  # Ha

    def check(self, atoms: Atoms) -> None:
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.species))
        if unknown:
            raise ValueError(f"element(s) {', '.join(unknown)} not supported by {self.name}; "
                             f"supported: {', '.join(self.species)}")
        if any(atoms.pbc):
            raise ValueError("ANICalculator here handles molecules only (no periodic cell)")
        # ANI-1x and ANI-1ccx were trained on neutral closed-shell molecules only
        charge = formal_charge(atoms)
        if charge:
            raise ValueError(f"{self.name} describes neutral molecules; "
                             f"{atoms.get_chemical_formula()} carries a net formal charge of "
                             f"{charge:+d} (use PySCF with that charge)")
        if int(atoms.numbers.sum()) % 2:
            raise ValueError(f"{self.name} describes closed-shell molecules; "
                             f"{atoms.get_chemical_formula()} has an odd number of electrons "
                             "(a radical: use PySCF with spin 1)")

    def species_tensor(self, atoms: Atoms) -> torch.Tensor:
        self.check(atoms)
        return torch.tensor([self._index[s] for s in atoms.get_chemical_symbols()],
                            dtype=torch.long, device=self.device)

    def evaluate(self, atoms: Atoms, positions: torch.Tensor):
        species = self.species_tensor(atoms)
        W = positions.shape[0]
        with torch.enable_grad():
            coords = positions.detach().to(device=self.device, dtype=self.dtype)
            coords.requires_grad_(True)
            if self.batched_modules:
                atomic = self.ensemble(species, self.aev(species, coords))
                (gradient,) = torch.autograd.grad(atomic.sum(), coords)
                # The self energies (a constant, ~ -500 Ha here) are added in float64: a
                # float32 total of -13 500 eV carries ~1e-3 eV of rounding, more than the
                # dedup's energy tolerance on larger molecules.
                energies = atomic.detach().double() + self.self_energies[species].sum()
            else:      # float64 total as well: the EnergyShifter is kept in float64
                energies = self.network((species.expand(W, -1), coords)).energies
                (gradient,) = torch.autograd.grad(energies.sum(), coords)
        out_dtype = positions.dtype if positions.is_floating_point() else torch.float64
        return ((energies.detach() * Hartree).to("cpu", out_dtype),
                (-gradient * Hartree).to("cpu", out_dtype))


class ANICalculator(BatchCalculator):
    """ASE calculator for ANI-1x / ANI-1ccx built from torchani's packaged files.

    >>> atoms.calc = ANICalculator('ani1x')            # doctest: +SKIP
    """

    def __init__(self, model: str = "ani1x", device="auto", dtype=torch.float32, **kwargs):
        super().__init__(ANIModel(model, device=device, dtype=dtype), **kwargs)
