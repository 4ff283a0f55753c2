"""Exact batched Lennard-Jones (no cutoff) for tests and benchmarks."""
from __future__ import annotations

import numpy as np
import torch
from ase import Atoms

from .calculators.base import BatchCalculator, BatchModel


class LennardJonesModel(BatchModel):
    """E = 4 eps sum_{i<j} [(sigma/r)^12 - (sigma/r)^6], all pairs, no cutoff."""

    def __init__(self, epsilon: float = 1.0, sigma: float = 1.0):
        self.epsilon = epsilon
        self.sigma = sigma

    def evaluate(self, atoms: Atoms, positions: torch.Tensor):
        x = positions.to(torch.float64)
        N = x.shape[1]
        diff = x[:, :, None, :] - x[:, None, :, :]                 # (W, N, N, 3)
        r2 = (diff * diff).sum(-1)
        eye = torch.eye(N, dtype=torch.bool, device=x.device)
        safe_r2 = torch.where(eye, torch.ones_like(r2), r2)
        inv2 = torch.where(eye, torch.zeros_like(r2), self.sigma ** 2 / safe_r2)
        inv6 = inv2 ** 3
        energy = 2.0 * self.epsilon * (inv6 * inv6 - inv6).sum((1, 2))   # each pair counted twice
        # -dE/dr_i = sum_j 24 eps (2 s^12/r^14 - s^6/r^8) (r_i - r_j)
        coeff = 24.0 * self.epsilon * (2.0 * inv6 * inv6 - inv6) * inv2 / self.sigma ** 2
        forces = (coeff[..., None] * diff).sum(2)
        return energy.to(positions.dtype), forces.to(positions.dtype)


class LennardJones(BatchCalculator):
    """ASE calculator over :class:`LennardJonesModel` (default eps = sigma = 1)."""

    def __init__(self, epsilon: float = 1.0, sigma: float = 1.0, **kwargs):
        super().__init__(LennardJonesModel(epsilon, sigma), **kwargs)


def random_cluster(n: int, seed: int = 0, density: float = 0.8, min_distance: float = 0.9,
                   symbol: str = "Ar") -> Atoms:
    """n atoms uniform in a sphere at reduced density ``density`` (LJ units), no
    pair closer than ``min_distance``, with the exact LJ calculator attached."""
    rng = np.random.default_rng(seed)
    radius = (3 * n / (4 * np.pi * density)) ** (1 / 3)
    points: list[np.ndarray] = []
    while len(points) < n:
        p = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(p) <= radius and all(np.linalg.norm(p - q) > min_distance
                                               for q in points):
            points.append(p)
    atoms = Atoms(f"{symbol}{n}", positions=points)
    atoms.calc = LennardJones()
    return atoms
