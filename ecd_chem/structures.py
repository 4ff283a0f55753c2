"""Structures: bond topology, symmetry-aware comparison, and writing ensembles.

* :func:`bond_graph` -- covalent-radius connectivity (the CREST-style topology check).
* :func:`equivalence_classes` -- atoms that are topologically equivalent (same
  element, same bonded environment to any depth: methyl hydrogens, the two
  oxygens of a carboxylate, ...). Only these are ever permuted.
* :func:`rmsd` -- RMSD after optimal rotation (Kabsch), minimized over
  permutations within equivalence classes (assignment, then re-alignment).
* :func:`cluster_fingerprint` -- sorted pair distances, for atomic clusters whose
  atoms are all equivalent.
* :func:`write_ensemble` -- the one place that writes conformer ensembles.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.units import kcal, mol

KCAL_PER_MOL = kcal / mol          # eV


class InputError(ValueError):
    """A structure or setting the user gave cannot be used; the message says why."""


def read_structure(path) -> Atoms:
    """The one place that reads an input structure (anything ase.io.read reads:
    xyz, extxyz, sdf/mol, pdb, traj); the first frame. Raises InputError with a
    one-line reason for a missing, empty or malformed file or unusable atoms."""
    from ase.io import read

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        atoms = read(path, index=0)
    except Exception as err:          # ASE raises many kinds for malformed files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot read a structure ({reason})") from None
    check_atoms(atoms, path)
    return atoms


def check_atoms(atoms: Atoms, where: str = "input") -> None:
    """Reject structures no calculation should start from."""
    if len(atoms) == 0:
        raise InputError(f"{where}: no atoms")
    if not np.isfinite(atoms.positions).all():
        raise InputError(f"{where}: coordinates must be finite numbers")
    if len(atoms) > 1:
        d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
        d[np.diag_indices(len(atoms))] = np.inf
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < 0.3:
            raise InputError(f"{where}: atoms {i + 1} and {j + 1} are {d[i, j]:.3f} A apart "
                             "(closer than 0.3 A)")


def from_smiles(smiles: str, conformers: int = 8, seed: int = 0) -> list[Atoms]:
    """ETKDG conformers (with hydrogens) of a SMILES string, via RDKit."""
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import AllChem
    except ImportError:
        raise InputError("SMILES input needs RDKit: pip install 'ecd-chem[smiles]'") from None
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        raise InputError(f"invalid SMILES: {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(conformers), params=params))
    if not ids:
        raise InputError(f"RDKit could not embed a 3D structure for {smiles!r}")
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    frames = []
    for i in ids:
        atoms = Atoms(symbols, positions=mol.GetConformer(i).GetPositions())
        atoms.info["smiles"] = smiles
        frames.append(atoms)
    return frames


def bond_graph(atoms: Atoms, scale: float = 1.2) -> np.ndarray:
    """(N, N) bool adjacency: bonded when d < scale * (r_cov,i + r_cov,j)."""
    radii = covalent_radii[atoms.numbers]
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    adjacency = d < scale * (radii[:, None] + radii[None])
    np.fill_diagonal(adjacency, False)
    return adjacency


def rotatable_bonds(adjacency: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Bonds (i, j) outside rings with both ends bonded elsewhere, each with the
    (N,) bool mask of the smaller side (the atoms that rotate with j)."""
    n = len(adjacency)
    bonds = []
    for i, j in zip(*np.nonzero(np.triu(adjacency))):
        if adjacency[i].sum() < 2 or adjacency[j].sum() < 2:
            continue
        side = np.zeros(n, bool)
        side[j] = True
        stack = [j]
        while stack:                          # atoms reachable from j without crossing i-j
            k = stack.pop()
            for m in np.flatnonzero(adjacency[k]):
                if not side[m] and not (k == j and m == i):
                    side[m] = True
                    stack.append(m)
        if side[i]:                           # i reachable: the bond is in a ring
            continue
        if side.sum() > n - side.sum():
            side, i, j = ~side, j, i
        bonds.append((int(i), int(j), side))
    return bonds


class CartesianSpace:
    """Cartesian coordinates for ECD (atomic clusters): q is the geometry itself."""

    count = None

    def initial(self, cart):
        return cart.clone()

    def gradient(self, cart, cart_gradient):
        return cart_gradient

    def move(self, cart, dq):
        return cart + dq


class TorsionSpace:
    """Torsion angles about the rotatable bonds as coordinates for ECD.

    The walker's coordinates q (W, T, 1) are torsion angles (radians) measured
    from where its excursion began; its Cartesian geometry follows by rigid
    rotations of each bond's smaller side. Bond lengths and angles stay as they
    were, so no stiff mode limits the time step. dF/dq_b = -sum_k F_k . (u_b x
    (r_k - r_j)) over the rotating atoms k (u_b the unit bond axis).
    """

    def __init__(self, adjacency: np.ndarray):
        bonds = rotatable_bonds(adjacency)
        self.count = len(bonds)
        self.i = np.array([b[0] for b in bonds], dtype=int)
        self.j = np.array([b[1] for b in bonds], dtype=int)
        self.side = (np.stack([b[2] for b in bonds]).astype(float) if bonds
                     else np.zeros((0, len(adjacency))))

    def initial(self, cart):
        import torch
        return torch.zeros(cart.shape[0], self.count, 1, dtype=cart.dtype)

    def _axes(self, cart):
        xi, xj = cart[:, self.i], cart[:, self.j]
        return (xj - xi) / (xj - xi).norm(dim=-1, keepdim=True), xj

    def gradient(self, cart, cart_gradient):
        """dF/dq (W, T, 1) from the Cartesian gradient (W, N, 3) at ``cart``."""
        import torch
        axis, origin = self._axes(cart)                                      # (W, T, 3)
        arm = cart[:, None] - origin[:, :, None]                             # (W, T, N, 3)
        tangent = torch.cross(axis[:, :, None].expand_as(arm), arm, dim=-1)
        side = torch.as_tensor(self.side, dtype=cart.dtype)[None, :, :, None]
        return (tangent * side * cart_gradient[:, None]).sum((2, 3))[..., None]

    def move(self, cart, dq):
        """Rotate each bond's side of ``cart`` (W, N, 3) by dq (W, T, 1), in turn."""
        import torch
        side = torch.as_tensor(self.side, dtype=cart.dtype)
        for b in range(self.count):
            axis, origin = self._axes(cart)
            u, o = axis[:, b, None], origin[:, b, None]                      # (W, 1, 3)
            angle = dq[:, b]                                                  # (W, 1)
            v = cart - o
            cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
            rotated = (v * cos + torch.cross(u.expand_as(v), v, dim=-1) * sin
                       + u * (v * u).sum(-1, keepdim=True) * (1 - cos)) + o
            cart = torch.where(side[b][None, :, None] > 0, rotated, cart)
        return cart


def same_topology(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def equivalence_classes(numbers, adjacency: np.ndarray) -> np.ndarray:
    """(N,) class labels: iterated neighbour refinement (Weisfeiler-Lehman) of
    the element labels until stable."""
    labels = np.asarray(numbers, dtype=np.int64).copy()
    for _ in range(len(labels)):
        signatures = [(labels[i], tuple(sorted(labels[adjacency[i]]))) for i in range(len(labels))]
        index = {s: k for k, s in enumerate(sorted(set(signatures)))}
        new = np.array([index[s] for s in signatures])
        if len(set(new)) == len(set(labels)):
            return new
        labels = new
    return labels


def _kabsch(a: np.ndarray, b: np.ndarray):
    """Rotation R minimizing |a R - b| for centred a, b (N, 3)."""
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def rmsd(a: np.ndarray, b: np.ndarray, classes=None, iterations: int = 4) -> float:
    """RMSD (same units as a, b) after centring, optimal rotation, and the best
    permutation within each class of equivalent atoms (None: no permutations).

    Alignment and assignment alternate, starting from the given order and from
    the principal-axes alignments, so that a permuted copy is recognised even
    when it is also rotated.
    """
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(a, float) - np.mean(a, 0)
    b = np.asarray(b, float) - np.mean(b, 0)

    def deviation(order):
        moved = a[order] @ _kabsch(a[order], b)
        return float(np.sqrt(((moved - b) ** 2).sum(1).mean()))

    identity = np.arange(len(a))
    if classes is None or len(set(classes)) == len(classes):
        return deviation(identity)
    classes = np.asarray(classes)
    groups = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    guesses = [_kabsch(a, b)] + [_principal_rotation(a, b, flip) for flip in _axis_flips()]
    best = deviation(identity)
    for rot in guesses:
        order = _assign(a @ rot, b, groups, linear_sum_assignment)
        for _ in range(iterations):
            order = _assign(a @ _kabsch(a[order], b), b, groups, linear_sum_assignment)
        best = min(best, deviation(order))
    return best


def _assign(a_rot, b, groups, solver):
    """order such that a[order][i] is matched to b[i], within each group."""
    order = np.arange(len(b))
    for g in groups:
        if len(g) == 1:
            continue
        cost = ((b[g][:, None] - a_rot[g][None]) ** 2).sum(-1)
        rows, cols = solver(cost)
        order[g[rows]] = g[cols]
    return order


def _axis_flips():
    for sx in (1, -1):
        for sy in (1, -1):
            yield np.diag([sx, sy, sx * sy])


def _principal_rotation(a, b, flip=np.eye(3)):
    """Rotation taking a's principal axes onto b's (one of the sign choices)."""
    def axes(x):
        w, v = np.linalg.eigh(x.T @ x)
        return v[:, np.argsort(w)]
    return axes(a) @ flip @ axes(b).T


def cluster_fingerprint(positions: np.ndarray) -> np.ndarray:
    """Sorted pair distances: invariant to rotation, translation, permutation."""
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    return np.sort(d[np.triu_indices(len(positions), 1)])


def boltzmann_weights(energies_ev, temperature: float) -> np.ndarray:
    """Normalized Boltzmann populations at temperature (K) of energies in eV."""
    from ase.units import kB
    e = np.asarray(energies_ev, float)
    if len(e) == 0:
        return e
    if temperature <= 0:
        w = (e == e.min()).astype(float)
    else:
        w = np.exp(-(e - e.min()) / (kB * temperature))
    return w / w.sum()


def atomic_write(path, write_to) -> None:
    """Write through ``write_to(tmp_path)`` and rename into place, so a kill
    leaves either the old file or the new one, never half of one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write_to(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_ensemble(path, conformers: list[Atoms], format: str | None = None) -> None:
    """Write conformers (ascending energy) atomically; the format follows the
    extension (xyz, extxyz, traj, pdb, sdf, ...). For .xyz each comment line
    carries rank, energy (eV) and relative energy (kcal/mol)."""
    from ase.io import write

    path = os.fspath(path)
    ext = (format or os.path.splitext(path)[1].lstrip(".")).lower()
    if not conformers:
        raise ValueError("no conformers to write")
    e0 = conformers[0].info["energy"]
    frames = []
    for rank, atoms in enumerate(conformers, 1):
        frame = Atoms(atoms.symbols, positions=atoms.positions)
        frame.info.update({k: v for k, v in atoms.info.items() if np.isscalar(v)})
        frame.info.update(rank=rank, energy=float(atoms.info["energy"]),
                          relative_kcal_mol=float((atoms.info["energy"] - e0) / KCAL_PER_MOL))
        frames.append(frame)

    def write_to(tmp):
        if ext == "xyz":
            with open(tmp, "w") as fh:
                for f in frames:
                    fh.write(f"{len(f)}\n")
                    fh.write(f"rank={f.info['rank']} energy_eV={f.info['energy']:.8f} "
                             f"relative_kcal_mol={f.info['relative_kcal_mol']:.4f}\n")
                    for s, (x, y, z) in zip(f.get_chemical_symbols(), f.positions):
                        fh.write(f"{s:2s} {x:16.10f} {y:16.10f} {z:16.10f}\n")
        else:
            write(tmp, frames, format=format)
    atomic_write(path, write_to)
