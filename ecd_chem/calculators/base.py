"""One batched-evaluation interface for every force provider.

A :class:`BatchModel` evaluates W geometries of the same atoms at once::

    energies (W,) [eV], forces (W, N, 3) [eV/A] = model.evaluate(atoms, positions (W, N, 3))

ANI implements it natively (one forward/backward pass); any ASE calculator gets
it through :class:`ASELoopModel`, with one calculator per walker where the
calculator keeps per-geometry state (PySCF's warm-started scanners).
A walker whose evaluation fails gets NaN energy and forces; the others are
untouched. :class:`BatchCalculator` turns a BatchModel back into an ordinary
ASE calculator, and :class:`Evaluator` is what the integrator calls: it counts
every force call and hands back gradients.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

log = logging.getLogger(__name__)


class BatchModel:
    """Energies and forces of W geometries of one molecule in one call."""

    def evaluate(self, atoms: Atoms, positions: torch.Tensor):
        """positions (W, N, 3) in Angstrom -> (energies (W,) eV, forces (W, N, 3) eV/A)."""
        raise NotImplementedError

    def check(self, atoms: Atoms) -> None:
        """Raise a clear ValueError if this model cannot handle ``atoms``."""


class BatchCalculator(Calculator):
    """An ASE calculator (energy, free_energy, forces) over a :class:`BatchModel`."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model: BatchModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.model.check(self.atoms)
        positions = torch.as_tensor(self.atoms.get_positions())[None]
        energy, forces = self.model.evaluate(self.atoms, positions)
        e = float(energy[0])
        self.results = {"energy": e, "free_energy": e,
                        "forces": forces[0].detach().cpu().numpy().astype(float)}


class ASELoopModel(BatchModel):
    """Any ASE calculator as a BatchModel: a loop over walkers.

    ``calculator`` is either one calculator shared by all walkers or a
    zero-argument factory; with a factory each walker gets its own instance
    (so stateful calculators such as SCF scanners warm-start per walker).
    """

    def __init__(self, calculator):
        if calculator is None:
            raise ValueError("a calculator is required")
        self._factory = calculator if callable(calculator) and not isinstance(
            calculator, Calculator) else None
        self._shared = None if self._factory else calculator
        self._per_walker: dict[int, Calculator] = {}

    def calculator_for(self, walker: int):
        if self._factory is None:
            return self._shared
        if walker not in self._per_walker:
            self._per_walker[walker] = self._factory()
        return self._per_walker[walker]

    def evaluate(self, atoms: Atoms, positions: torch.Tensor):
        pos = positions.detach().cpu().numpy()
        W, N = pos.shape[:2]
        energies = np.full(W, np.nan)
        forces = np.full((W, N, 3), np.nan)
        for w in range(W):
            image = atoms.copy()
            image.set_positions(pos[w], apply_constraint=False)
            image.calc = self.calculator_for(w)
            try:
                energies[w] = image.get_potential_energy()
                forces[w] = image.get_forces(apply_constraint=False)
            except Exception as err:  # one walker's failure must not end the batch
                log.warning("walker %d: calculator failed: %s", w, err)
        return (torch.as_tensor(energies, dtype=positions.dtype),
                torch.as_tensor(forces, dtype=positions.dtype))


def as_batch_model(calculator) -> BatchModel:
    """The batched interface for a BatchModel, a BatchCalculator, or any ASE calculator."""
    if isinstance(calculator, BatchModel):
        return calculator
    if isinstance(calculator, BatchCalculator):
        return calculator.model
    if hasattr(calculator, "batch_model"):      # e.g. PySCF: one scanner per walker
        return calculator.batch_model()
    return ASELoopModel(calculator)


class Evaluator:
    """x (W, N, 3) -> (F (W,), dF/dx (W, N, 3)) as the integrator wants it,
    counting force calls: a batch of W geometries counts W."""

    def __init__(self, model: BatchModel, atoms: Atoms, dtype=torch.float64):
        self.model = model
        self.atoms = atoms
        self.dtype = dtype
        self.calls = 0

    def __call__(self, x: torch.Tensor):
        self.calls += x.shape[0]
        energies, forces = self.model.evaluate(self.atoms, x)
        return energies.to(self.dtype), -forces.to(self.dtype)
