"""ECDOpt: Energy-Conserving Descent as an ASE optimizer (drop-in for BFGS/FIRE).

Energy-conserving dynamics never stops by itself, so ECDOpt runs in two phases:

1. **ECD exploration** -- one BBI walker (or Ruthless / ECDSep) with adaptive
   floor dV. Starting at rest, it falls down the potential with speed ~ sqrt(V),
   overshoots, and can cross barriers lower than the energy it carries. The
   phase ends when ``patience`` steps pass without a new lowest energy (the
   walker has passed the bottom of what it can reach) or after ``explore_steps``.
2. **Closing quench** -- L-BFGS from the lowest point the walker visited, until
   the largest force is below ``fmax``. Nothing is re-evaluated at the switch:
   the energy and forces of the lowest point were stored when it was visited.

``run(fmax, steps)`` has ASE's meaning: True only when max |F_i| < fmax; every
step is one force call, so ``nsteps + 1`` calls in all; ``ecd_calls`` and
``quench_calls`` split them. All reads and writes go through
``self.optimizable``, so ASE constraints and filters work.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from ase.optimize.optimize import DEFAULT_MAX_STEPS, Optimizer

from . import dynamics as ecd


def _atoms_of(target):
    """The Atoms behind a Filter or an Atoms."""
    return getattr(target, "atoms", target)


def _movable_mask(target, nrows: int) -> torch.Tensor:
    """(1, nrows, 1): 0 for atoms held by FixAtoms, so bounces never push them."""
    from ase.constraints import FixAtoms

    mask = torch.ones(1, nrows, 1, dtype=torch.float64)
    atoms = _atoms_of(target)
    for constraint in getattr(atoms, "constraints", []):
        if isinstance(constraint, FixAtoms):
            fixed = [i for i in constraint.get_indices() if i < nrows]
            mask[0, fixed] = 0.0
    return mask


class ECDOpt(Optimizer):
    """Energy-Conserving Descent optimizer.

    Parameters
    ----------
    atoms: Atoms or an ASE Filter, with a calculator.
    restart, logfile, trajectory, append_trajectory: as every ASE optimizer.
    seed: seed of the walker's own random generator (bounces, noise).
    method, dt, eta, delta_energy, gap, conserve_energy, nu, bounce_every,
        fixed_bounces, bounce_patience, max_step: ECD dynamics, see
        :class:`ecd_chem.dynamics.ECDParams` (eV, Angstrom).
    explore_steps: the most ECD steps before the quench (0: quench only).
    patience: ECD steps without a new lowest energy that end exploration.
    maxstep: largest atomic displacement of a quench step (A).
    memory: L-BFGS history length of the quench.
    precon: start the quench's inverse Hessian from the Exp preconditioner
        (Packwood et al. 2016), so soft collective motions take long steps.
        None (default): on for a plain, non-periodic Atoms; off for filters
        (their cell rows are not atoms) and periodic cells.
    """

    defaults = {**Optimizer.defaults, "maxstep": 0.2}

    def __init__(self, atoms, restart=None, logfile="-", trajectory=None,
                 append_trajectory=False, seed=None, *, method="bbi", dt=0.1, eta=1.0,
                 delta_energy=0.0, gap=1.0, conserve_energy=True, nu=0.0, bounce_every=0,
                 fixed_bounces=0, bounce_patience=0, max_step=0.2, explore_steps=30,
                 patience=3, maxstep=None, memory=100, precon=None, **kwargs):
        if _atoms_of(atoms).calc is None:
            raise ValueError("ECDOpt needs atoms with a calculator attached (atoms.calc is None)")
        self.params = ecd.ECDParams(
            method=method, dt=dt, eta=eta, conserve_energy=conserve_energy,
            delta_energy=delta_energy, gap=gap, bounce_every=bounce_every,
            fixed_bounces=fixed_bounces, bounce_patience=bounce_patience, nu=nu,
            max_step=max_step)
        self.maxstep = self.defaults["maxstep"] if maxstep is None else maxstep
        if self.maxstep <= 0 or explore_steps < 0 or patience < 1 or memory < 1:
            raise ValueError("maxstep must be > 0, explore_steps >= 0, patience >= 1, memory >= 1")
        if precon is None:
            precon = _atoms_of(atoms) is atoms and not atoms.pbc.any()
        elif precon and (_atoms_of(atoms) is not atoms or atoms.pbc.any()):
            raise ValueError("precon=True needs a plain, non-periodic Atoms (not a filter)")
        self.quench_params = ecd.QuenchParams(memory=memory, max_step=self.maxstep,
                                              precon=bool(precon))
        self.explore_steps = int(explore_steps)
        self.patience = int(patience)
        self.seed = seed
        super().__init__(atoms, restart=restart, logfile=logfile, trajectory=trajectory,
                         append_trajectory=append_trajectory, **kwargs)

    def run(self, fmax=0.05, steps=DEFAULT_MAX_STEPS):
        _check_run(fmax, steps)
        return super().run(fmax=fmax, steps=steps)

    def irun(self, fmax=0.05, steps=DEFAULT_MAX_STEPS):
        _check_run(fmax, steps)
        return super().irun(fmax=fmax, steps=steps)

    # -- ASE Optimizer hooks -------------------------------------------------------
    def initialize(self):
        self.walker: ecd.ECDState | None = None
        self.quench: ecd.QuenchState | None = None
        self.phase = "ecd" if self.explore_steps > 0 else "quench"
        self.ecd_calls = 0
        self.quench_calls = 0

    def todict(self):
        d = super().todict()
        d.update(method=self.params.method, dt=self.params.dt, eta=self.params.eta,
                 explore_steps=self.explore_steps, patience=self.patience,
                 precon=self.quench_params.precon)
        return d

    def _evaluation(self, gradient=None):
        """Current (x, F, dF/dx) as (1, rows, 3) tensors; NaN or inf is an error."""
        opt = self.optimizable
        x = torch.as_tensor(np.asarray(opt.get_x(), dtype=float)).reshape(1, -1, 3)
        g = opt.get_gradient() if gradient is None else gradient
        g = torch.as_tensor(np.asarray(g, dtype=float)).reshape(1, -1, 3)
        f = torch.tensor([float(opt.get_value())], dtype=torch.float64)
        if not (torch.isfinite(f).all() and torch.isfinite(g).all()):
            raise FloatingPointError(
                f"ECDOpt step {self.nsteps}: the calculator returned a non-finite "
                "energy or forces; stopping (the trajectory so far is kept)")
        return x, f, g

    def log(self, gradient):
        # Dynamics.irun logs before it writes the trajectory: refusing a
        # non-finite evaluation here keeps NaN out of every output file.
        self._evaluation(gradient)
        super().log(gradient)

    def step(self, gradient=None):
        x, f, g = self._evaluation(gradient)
        if self.phase == "ecd":
            if self.walker is None:
                self.walker = ecd.init(x, f, g, self.params, seed=self.seed,
                                       movable=_movable_mask(self.optimizable, x.shape[1]))
                self.quench = ecd.quench_init(x, f, g, self.quench_params)
            else:
                self.walker = ecd.absorb(self.walker, f, g, self.params, x=x)
                self.quench = ecd.quench_observe(self.quench, x, f, g)
            done = (int(self.walker.steps[0]) >= self.explore_steps
                    or int(self.walker.since_best[0]) >= self.patience)
            if done:
                w = self.walker
                self.phase = "quench"
                self.quench = self.quench.replace(x=w.best_x, f=w.best_f, g=w.best_g)
        elif self.quench is None:
            self.quench = ecd.quench_init(x, f, g, self.quench_params)
        else:
            self.quench = ecd.quench_absorb(self.quench, f, g, x=x)

        if self.phase == "ecd":
            self.walker = ecd.propose(self.walker, self.params)
            target = self.walker.x
            self.ecd_calls += 1
        else:
            self.quench = ecd.quench_propose(self.quench, self.quench_params)
            target = self.quench.x
            self.quench_calls += 1
        self.optimizable.set_x(target.reshape(-1).numpy())
        self.dump(self._restart_data())

    # -- restart ------------------------------------------------------------------------
    def _restart_data(self):
        return {"phase": self.phase, "ecd_calls": self.ecd_calls,
                "quench_calls": self.quench_calls,
                "walker": None if self.walker is None else self.walker.to_dict(),
                "quench": None if self.quench is None else self.quench.to_dict()}

    def read(self):
        data = self.load()
        self.phase = data["phase"]
        self.ecd_calls = data["ecd_calls"]
        self.quench_calls = data["quench_calls"]
        self.walker = None if data["walker"] is None else ecd.ECDState.from_dict(data["walker"])
        self.quench = None if data["quench"] is None else ecd.QuenchState.from_dict(data["quench"])


def _check_run(fmax, steps):
    if not (fmax > 0 and math.isfinite(fmax)):
        raise ValueError(f"fmax must be a finite number > 0 (eV/A), got {fmax}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
