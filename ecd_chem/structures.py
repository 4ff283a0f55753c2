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

import math
import os
import shutil
import tempfile

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.units import kcal, mol

KCAL_PER_MOL = kcal / mol          # eV


class InputError(ValueError):
    """A structure or setting the user gave cannot be used; the message says why."""


SDF_EXTENSIONS = (".sdf", ".sd", ".mol", ".mdl")


def read_structure(path) -> Atoms:
    """The one place that reads an input structure (anything ase.io.read reads:
    xyz, extxyz, sdf/mol, pdb, traj); the first frame. SDF/MOL keep their bonds
    in ``info['bonds']`` and formal charges as initial charges. Raises
    InputError with a one-line reason for a missing, empty or malformed file or
    unusable atoms."""
    return read_structures(path, index=0)[0]


def read_structures(path, index=":") -> list[Atoms]:
    """Every frame (or record, for SDF) of a structure file, each checked."""
    from ase.io import read

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        if path.lower().endswith(SDF_EXTENSIONS):
            frames = read_sdf(path)
            frames = frames[:1] if index == 0 else frames
        else:
            frames = read(path, index=index)
            frames = [frames] if isinstance(frames, Atoms) else list(frames)
    except InputError:
        raise
    except Exception as err:          # ASE raises many kinds for malformed files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: cannot read a structure ({reason})") from None
    if not frames:
        raise InputError(f"{path}: no structure in the file")
    for k, atoms in enumerate(frames):
        check_atoms(atoms, path if len(frames) == 1 else f"{path} record {k + 1}")
    return frames


def read_sdf(path) -> list[Atoms]:
    """The records of a V2000 SDF/MOL file: title in info['name'], bonds as
    info['bonds'] = ((i, j, order), ...) with 0-based atoms, formal charges
    (``M  CHG``) as initial charges, data items in info."""
    with open(path) as fh:
        records = sdf_records(fh.read())
    frames = []
    for number, lines in enumerate(records, 1):
        try:
            frames.append(parse_molblock(lines))
        except (ValueError, IndexError) as err:
            raise InputError(f"{path}: record {number} is not a valid V2000 molfile ({err})") from None
    return frames


def sdf_records(text: str) -> list[list[str]]:
    """The non-empty records of SDF text, each as its list of lines."""
    records, lines = [], []
    for line in text.splitlines():
        if line.startswith("$$$$"):
            records.append(lines)
            lines = []
        else:
            lines.append(line)
    records.append(lines)
    return [r for r in records if any(line.strip() for line in r)]


def parse_molblock(lines: list[str]) -> Atoms:
    """One V2000 record (its lines) -> Atoms; ValueError or IndexError if malformed."""
    from ase.data import atomic_numbers
    counts = lines[3]
    if "V3000" in counts:
        raise ValueError("V3000 is not supported; convert to V2000")
    n_atoms, n_bonds = int(counts[0:3]), int(counts[3:6])
    if n_atoms < 1:
        raise ValueError("no atoms")
    symbols, positions = [], []
    for line in lines[4:4 + n_atoms]:
        positions.append([float(line[0:10]), float(line[10:20]), float(line[20:30])])
        symbol = line[31:34].strip()
        if symbol not in atomic_numbers:
            raise ValueError(f"unknown element {symbol!r}")
        symbols.append(symbol)
    bonds = []
    for line in lines[4 + n_atoms:4 + n_atoms + n_bonds]:
        i, j, order = int(line[0:3]) - 1, int(line[3:6]) - 1, int(line[6:9])
        if not (0 <= i < n_atoms and 0 <= j < n_atoms):
            raise ValueError(f"bond to a missing atom: {line.strip()}")
        bonds.append((i, j, order))
    charges = np.zeros(n_atoms)
    rest = lines[4 + n_atoms + n_bonds:]
    for line in rest:
        if line.startswith("M  CHG"):
            fields = line.split()[3:]
            for a, q in zip(fields[0::2], fields[1::2]):
                charges[int(a) - 1] = int(q)
        if line.startswith("M  END"):
            break
    atoms = Atoms(symbols, positions=positions, charges=charges)
    atoms.info["name"] = lines[0].strip()
    atoms.info["bonds"] = tuple(bonds)
    for k, line in enumerate(rest):                       # "> <key>" data items
        if line.startswith(">") and "<" in line and k + 1 < len(rest):
            key = line[line.index("<") + 1:line.rindex(">")]
            atoms.info.setdefault(key, _number_or_text(rest[k + 1].strip()))
    return atoms


def _number_or_text(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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


def formal_charge(atoms: Atoms) -> int:
    """Net charge from the formal charges the structure was read with (SMILES,
    SDF ``M  CHG``; kept as initial charges); 0 when it has none."""
    return int(round(float(atoms.get_initial_charges().sum())))


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
    params.randomSeed = int(seed) + 1   # RDKit's seed 0 embeds every conformer identically
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(conformers), params=params))
    if not ids:
        raise InputError(f"RDKit could not embed a 3D structure for {smiles!r}")
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    kekule = Chem.Mol(mol)
    Chem.Kekulize(kekule, clearAromaticFlags=True)        # SDF bond orders 1, 2, 3
    bonds = tuple((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondTypeAsDouble()))
                  for b in kekule.GetBonds())
    frames = []
    for i in ids:
        atoms = Atoms(symbols, positions=mol.GetConformer(i).GetPositions(), charges=charges)
        atoms.info.update(smiles=smiles, bonds=bonds)
        frames.append(atoms)
    return frames


def bond_graph(atoms: Atoms, scale: float = 1.2) -> np.ndarray:
    """(N, N) bool adjacency: bonded when d < scale * (r_cov,i + r_cov,j)."""
    radii = covalent_radii[atoms.numbers]
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    adjacency = d < scale * (radii[:, None] + radii[None])
    np.fill_diagonal(adjacency, False)
    return adjacency


def _reachable(adjacency: np.ndarray, start: int, blocked) -> np.ndarray:
    """(N,) bool mask of the atoms reachable from ``start`` without entering ``blocked``."""
    seen = np.zeros(len(adjacency), bool)
    seen[start] = True
    stack = [start]
    while stack:
        k = stack.pop()
        for m in np.flatnonzero(adjacency[k]):
            if not seen[m] and m not in blocked:
                seen[m] = True
                stack.append(m)
    return seen


def rotatable_bonds(adjacency: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Bonds (i, j) outside rings with both ends bonded elsewhere, each with the
    (N,) bool mask of the smaller side (the atoms that rotate with j)."""
    n = len(adjacency)
    bonds = []
    for i, j in zip(*np.nonzero(np.triu(adjacency))):
        if adjacency[i].sum() < 2 or adjacency[j].sum() < 2:
            continue
        side = _reachable(adjacency, j, blocked={int(i)})
        beyond = side & (np.arange(n) != j)
        if (adjacency[i] & beyond).any():     # i reachable another way: the bond is in a ring
            continue
        if side.sum() > n - side.sum():
            side, i, j = ~side, j, i
        bonds.append((int(i), int(j), side))
    return bonds


def _shortest_path(adjacency: np.ndarray, a: int, b: int, avoid: int) -> list[int] | None:
    """Atoms of a shortest bonded path from a to b that avoids ``avoid`` (None: none)."""
    previous = {a: None}
    frontier = [a]
    while frontier and b not in previous:
        following = []
        for k in frontier:
            for m in np.flatnonzero(adjacency[k]):
                if m != avoid and m not in previous:
                    previous[int(m)] = k
                    following.append(int(m))
        frontier = following
    if b not in previous:
        return None
    path = [b]
    while path[-1] != a:
        path.append(previous[path[-1]])
    return path[::-1]


def ring_corners(adjacency: np.ndarray, positions, planar_within: float = 0.1
                 ) -> list[tuple[int, int, np.ndarray, list[int]]]:
    """Hinges that flap the corners of puckered rings: (a, b, side, ring) for
    each ring atom k whose only ring neighbours are a and b, ``side`` the (N,)
    bool mask of k and its substituents, ``ring`` the smallest ring through k
    in bonded order (a ... b, k). Turning ``side`` about the axis through a and b
    keeps k's bonds to a and b and the angle a-k-b; it moves k through the
    ring's mean plane (chair -> boat in cyclohexane), which is how rings change
    pucker. Left out: 3-rings, ring-fusion atoms (whose side is bonded to a or
    b beyond k) and rings whose atoms all lie within ``planar_within`` (A) of one plane in
    ``positions`` (aromatic rings, which have no pucker to change)."""
    adjacency = np.asarray(adjacency, bool)
    positions = np.asarray(positions, float)
    corners = []
    for k in range(len(adjacency)):
        neighbours = np.flatnonzero(adjacency[k])
        for n1, a in enumerate(neighbours):
            for b in neighbours[n1 + 1:]:
                path = _shortest_path(adjacency, int(a), int(b), avoid=k)
                if path is None or len(path) < 3:        # not a ring, or a 3-ring
                    continue
                side = _reachable(adjacency, k, blocked={int(a), int(b)})
                beyond = side & (np.arange(len(side)) != k)
                if (adjacency[[a, b]] & beyond).any():   # k is where rings are fused
                    continue
                ring = positions[path + [k]]
                centred = ring - ring.mean(0)
                normal = np.linalg.svd(centred)[2][-1]
                if np.abs(centred @ normal).max() < planar_within:
                    continue
                corners.append((int(a), int(b), side, path + [k]))
    return corners


class CartesianSpace:
    """Cartesian coordinates for ECD (atomic clusters): q is the geometry itself."""

    count = None

    def initial(self, cart):
        return cart.clone()

    def gradient(self, cart, cart_gradient):
        return cart_gradient

    def move(self, cart, dq):
        return cart + dq


def symmetric_top_ends(adjacency: np.ndarray, numbers) -> np.ndarray:
    """(N,) mask of the three like terminal atoms of each symmetric top (the H
    of CH3, the F of CF3): an atom bonded to them and to one other atom."""
    adjacency = np.asarray(adjacency, bool)
    terminal = adjacency.sum(1) == 1
    ends = np.zeros(len(adjacency), bool)
    for centre in range(len(adjacency)):
        tips = np.flatnonzero(adjacency[centre] & terminal)
        if (len(tips) == 3 and adjacency[centre].sum() == 4
                and len({int(numbers[k]) for k in tips}) == 1):
            ends[tips] = True
    return ends


class TorsionSpace:
    """Hinge angles as coordinates for ECD: torsions about the rotatable bonds
    and, given ``positions``, the flaps of puckered ring corners (``ring_corners``).

    The walker's coordinates q (W, T, 1) are hinge angles (radians) measured
    from where its excursion began; its Cartesian geometry follows by rigid
    rotations of each hinge's side about its axis (a rotatable bond, or the
    line through a ring corner's two ring neighbours). Bond lengths stay as
    they were, so no stiff mode limits the time step. dF/dq_b = -sum_k F_k .
    (u_b x (r_k - r_j)) over the rotating atoms k (u_b the unit axis, r_j a
    point on it).
    """

    def __init__(self, adjacency: np.ndarray, numbers=None, positions=None):
        bonds = rotatable_bonds(adjacency)
        corners = [] if positions is None else ring_corners(adjacency, positions)
        hinges = bonds + corners
        self.count = len(hinges)
        self.i = np.array([h[0] for h in hinges], dtype=int)
        self.j = np.array([h[1] for h in hinges], dtype=int)
        self.side = (np.stack([h[2] for h in hinges]).astype(float) if hinges
                     else np.zeros((0, len(adjacency))))
        # (T,) hinges that flap a ring corner rather than turn a bond
        self.corner = np.arange(self.count) >= len(bonds)
        # each corner's ring in bonded order, the corner atom last
        self.rings = [h[3] for h in corners]
        # (Q, 4) the endocyclic torsions of each distinct ring, and (Q,) which ring
        distinct = list({frozenset(r): r for r in self.rings}.values())
        self.ring_quads = np.array([[r[(i + k) % len(r)] for k in range(4)]
                                    for r in distinct for i in range(len(r))], dtype=int).reshape(-1, 4)
        self.quad_ring = np.array([n for n, r in enumerate(distinct) for _ in r], dtype=int)
        # (T,) torsions that turn a symmetric top (CH3, CF3): three like terminal
        # atoms on either end, so a turn by 120 degrees gives back the same conformer
        self.symmetric_top = np.zeros(self.count, bool)
        if numbers is not None:
            ends, bonded = symmetric_top_ends(adjacency, numbers), np.asarray(adjacency, bool)
            self.symmetric_top[:len(bonds)] = [ends[bonded[i]].sum() == 3 or ends[bonded[j]].sum() == 3
                                               for i, j in zip(self.i[:len(bonds)], self.j[:len(bonds)])]
        # (C, 4) a dihedral about each rotatable bond that is not a symmetric top,
        # through the heaviest neighbour on either side: turning that bond changes it
        bonded = np.asarray(adjacency, bool)
        mass = np.ones(len(bonded)) if numbers is None else np.asarray(numbers)

        def outer(a, b):
            return max((k for k in np.flatnonzero(bonded[a]) if k != b), key=lambda k: (mass[k], -k))
        self.chain_quads = np.array([[outer(i, j), i, j, outer(j, i)]
                                     for t, (i, j) in enumerate(zip(self.i, self.j))
                                     if not self.corner[t] and not self.symmetric_top[t]],
                                    dtype=int).reshape(-1, 4)

    def initial(self, cart):
        import torch
        return torch.zeros(cart.shape[0], self.count, 1, dtype=cart.dtype)

    def _axes(self, cart):
        xi, xj = cart[:, self.i], cart[:, self.j]
        return (xj - xi) / (xj - xi).norm(dim=-1, keepdim=True), xj

    def tangents(self, cart):
        """(W, T, N, 3): how each atom moves per radian of each hinge at ``cart``
        (u_b x (r_k - r_j) on the hinge's side, zero elsewhere)."""
        import torch
        axis, origin = self._axes(cart)                                      # (W, T, 3)
        arm = cart[:, None] - origin[:, :, None]                             # (W, T, N, 3)
        tangent = torch.cross(axis[:, :, None].expand_as(arm), arm, dim=-1)
        return tangent * torch.as_tensor(self.side, dtype=cart.dtype)[None, :, :, None]

    def gradient(self, cart, cart_gradient):
        """dF/dq (W, T, 1) from the Cartesian gradient (W, N, 3) at ``cart``."""
        return (self.tangents(cart) * cart_gradient[:, None]).sum((2, 3))[..., None]

    def pucker_signs(self, cart, tangents=None):
        """(W, T) the sign of each corner flap that moves its corner atom away
        from its ring's mean plane at ``cart`` (W, N, 3), puckering the corner
        further; 0 for bond torsions. ``tangents``: ``self.tangents(cart)``."""
        import torch
        tangents = self.tangents(cart) if tangents is None else tangents
        signs = torch.zeros(cart.shape[0], self.count, dtype=cart.dtype, device=cart.device)
        first = self.count - len(self.rings)
        for c, ring in enumerate(self.rings):
            centred = cart[:, ring] - cart[:, ring].mean(1, keepdim=True)      # (W, n, 3)
            # the mean plane's normal (Newell): the sum of r_i x r_i+1 round the ring
            normal = torch.cross(centred, centred.roll(-1, dims=1), dim=-1).sum(1)
            height = (centred[:, -1] * normal).sum(-1)                      # the corner atom's
            rise = (tangents[:, first + c, ring[-1]] * normal).sum(-1)
            signs[:, first + c] = torch.sign(height * rise)
        return signs

    def ring_torsions(self, cart):
        """(W, Q) the endocyclic torsions (radians) of the puckered rings at
        ``cart`` (W, N, 3), in the order of ``ring_quads``."""
        from .dynamics import dihedral_angles
        return dihedral_angles(cart, self.ring_quads)

    def inverted(self, cart, reference, least: float):
        """(W,) whether some ring at ``cart`` has the opposite pucker to its
        pucker at ``reference`` (both (W, N, 3)): every endocyclic torsion of
        that ring changed sign and is at least ``least`` radians from planar."""
        import torch
        now, then = self.ring_torsions(cart), self.ring_torsions(reference)
        flipped = ((now * then < 0) & (now.abs() >= least)).to(torch.long)
        rings = torch.as_tensor(self.quad_ring, device=cart.device)
        per_ring = torch.zeros(cart.shape[0], int(self.quad_ring.max()) + 1, dtype=torch.long,
                               device=cart.device).index_add_(1, rings, flipped)
        sizes = torch.bincount(rings)
        return (per_ring == sizes).any(1)

    def stirred(self, cart, reference, turn: float):
        """(W,) whether ``cart`` has begun to leave the conformer at ``reference``
        (both (W, N, 3)): some endocyclic torsion of a puckered ring has changed
        sign, or some torsion about a rotatable bond (``chain_quads``; symmetric
        tops left out) has turned by at least ``turn`` radians."""
        import torch
        from .dynamics import dihedral_angles
        moved = torch.zeros(cart.shape[0], dtype=torch.bool, device=cart.device)
        if len(self.ring_quads):
            moved |= (self.ring_torsions(cart) * self.ring_torsions(reference) < 0).any(1)
        if len(self.chain_quads):
            turned = dihedral_angles(cart, self.chain_quads) - dihedral_angles(reference, self.chain_quads)
            turned = torch.remainder(turned + math.pi, 2 * math.pi) - math.pi
            moved |= (turned.abs() >= turn).any(1)
        return moved

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


def largest_displacement(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance between an atom of a and the same atom of b (N, 3),
    after centring both and rotating a onto b (Kabsch); units of a and b."""
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(a @ _kabsch(a, b) - b, axis=1).max())


def rmsd(a: np.ndarray, b: np.ndarray, classes=None, iterations: int = 4,
         below: float | None = None) -> float:
    """RMSD (same units as a, b) after centring, optimal rotation, and the best
    permutation within each class of equivalent atoms (None: no permutations).

    Alignment and assignment alternate, starting from the given order and from
    the principal-axes alignments, so that a permuted copy is recognised even
    when it is also rotated. ``below``: stop at the first alignment closer than
    this and return its RMSD (enough to decide "same structure"), or return a
    lower bound >= ``below`` at once when the atoms' distances from the centre
    or the centroids of the classes already rule that out.
    """
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(a, float) - np.mean(a, 0)
    b = np.asarray(b, float) - np.mean(b, 0)
    if below is not None:
        bound = max(_radial_bound(a, b, classes), _centroid_bound(a, b, classes))
        if bound >= below:
            return bound

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
        if below is not None and best < below:
            break
        order = _assign(a @ rot, b, groups, linear_sum_assignment)
        for _ in range(iterations):
            previous, order = order, _assign(a @ _kabsch(a[order], b), b, groups,
                                             linear_sum_assignment)
            if (order == previous).all():    # a fixed point: more rounds repeat it
                break
        best = min(best, deviation(order))
    return best


def _radial_bound(a, b, classes=None) -> float:
    """A lower bound on the RMSD of centred a, b (N, 3) over all rotations and
    permutations within ``classes``: rotations keep each atom's distance from
    the centre, |r - r'| >= | |r| - |r'| |, and in one dimension the sorted
    matching is the best one."""
    ra, rb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    if classes is None:
        return float(np.sqrt(np.mean((ra - rb) ** 2)))
    classes = np.asarray(classes)
    total = 0.0
    for c in np.unique(classes):
        members = classes == c
        total += float(((np.sort(ra[members]) - np.sort(rb[members])) ** 2).sum())
    return float(np.sqrt(total / len(a)))


def _centroid_bound(a, b, classes=None) -> float:
    """A lower bound on the RMSD of a, b (N, 3) over all rigid motions and
    permutations within ``classes``: within a class of n atoms, sum |x_i - y_i|^2
    >= n |mean x - mean y|^2 whatever the matching, so the weighted Kabsch fit of
    the class centroids bounds the fit of the atoms. Tight when conformers differ
    in heavy-atom torsions; 0 for classes None (no permutations: no need)."""
    if classes is None:
        return 0.0
    labels, classes = np.unique(np.asarray(classes), return_inverse=True)
    members = np.zeros((len(labels), len(a)))
    members[classes, np.arange(len(a))] = 1.0
    size = members.sum(1)
    ca, cb = (members @ a) / size[:, None], (members @ b) / size[:, None]
    weight = size / size.sum()
    ca = (ca - weight @ ca) * np.sqrt(size)[:, None]
    cb = (cb - weight @ cb) * np.sqrt(size)[:, None]
    return float(np.sqrt(((ca @ _kabsch(ca, cb) - cb) ** 2).sum() / len(a)))


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


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporaries for the file or folder ``name``;
    the pid in it lets a later writer tell a killed writer's leftovers."""
    return f".tmp-{name}.{os.getpid()}."


def remove_stale_temps(directory: str, name: str) -> None:
    """Delete temporaries for ``name`` in ``directory`` whose writer process
    is gone (killed mid-write, e.g. by SIGKILL); a live writer's are kept.
    Pids are checked on this host: a writer on another host sharing the folder
    would look dead, which is safe only because one molecule or file has one
    writer at a time (a screen reruns a molecule only after its worker died)."""
    start = f".tmp-{name}."
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        pid = entry[len(start):].split(".", 1)[0]
        if not entry.startswith(start) or not pid.isdigit() or process_alive(int(pid)):
            continue
        stale = os.path.join(directory, entry)
        if os.path.isdir(stale):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            try:
                os.unlink(stale)
            except OSError:
                pass


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                    # exists, owned by someone else
    return True


def atomic_write(path, write_to) -> None:
    """Write through ``write_to(tmp_path)`` and rename into place, so a kill
    leaves either the old file or the new one, never half of one. Temporaries
    left by an earlier writer that was killed are removed first."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    remove_stale_temps(directory, name)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(name), suffix=suffix)
    os.close(fd)
    try:
        write_to(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_ensemble(path, conformers: list[Atoms], format: str | None = None) -> None:
    """Write conformers (ascending energy, info['energy'] in eV) atomically,
    each tagged with rank, energy and relative energy (kcal/mol); see
    :func:`write_structures` for the formats."""
    if not conformers:
        raise ValueError("no conformers to write")
    e0 = conformers[0].info["energy"]
    frames = []
    for rank, atoms in enumerate(conformers, 1):
        frame = atoms.copy()
        frame.calc = None
        frame.info.update(rank=rank, energy=float(atoms.info["energy"]),
                          relative_kcal_mol=float((atoms.info["energy"] - e0) / KCAL_PER_MOL))
        frames.append(frame)
    write_structures(path, frames, format=format)


def write_structures(path, frames, format: str | None = None) -> None:
    """The one place that writes structures, atomically; the format follows the
    extension: .xyz (frames with a rank get the ensemble comment line
    ``rank= energy_eV= relative_kcal_mol=``), .sdf/.mol (V2000 with the bonds
    and formal charges the input had, info as data items), or anything
    ``ase.io.write`` writes (extxyz, traj, pdb, ...)."""
    from ase.io import write

    path = os.fspath(path)
    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    ext = (format or os.path.splitext(path)[1].lstrip(".")).lower()
    for k, f in enumerate(frames):
        if not np.isfinite(f.positions).all():
            raise ValueError(f"frame {k + 1} has non-finite coordinates; not written")

    def plain(atoms):          # ASE writers take scalar info only
        copy = Atoms(atoms.symbols, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info.update({k: v for k, v in atoms.info.items() if np.isscalar(v)})
        copy.calc = atoms.calc
        return copy

    def write_to(tmp):
        if ext == "xyz" and all("rank" in f.info for f in frames):
            with open(tmp, "w") as fh:
                for f in frames:
                    fh.write(f"{len(f)}\n")
                    fh.write(f"rank={f.info['rank']} energy_eV={f.info['energy']:.8f} "
                             f"relative_kcal_mol={f.info['relative_kcal_mol']:.4f}\n")
                    for s, (x, y, z) in zip(f.get_chemical_symbols(), f.positions):
                        fh.write(f"{s:2s} {x:16.10f} {y:16.10f} {z:16.10f}\n")
        elif ext in ("sdf", "sd", "mol", "mdl"):
            with open(tmp, "w") as fh:
                fh.write("".join(_molblock(f) for f in frames))
        else:
            write(tmp, [plain(f) for f in frames], format=format)
    atomic_write(path, write_to)


def _molblock(atoms: Atoms) -> str:
    """One V2000 record ending in $$$$."""
    bonds = atoms.info.get("bonds", ())
    if len(atoms) > 999 or len(bonds) > 999:
        raise ValueError("V2000 SDF holds at most 999 atoms and 999 bonds")
    title = str(atoms.info.get("name") or atoms.get_chemical_formula())
    # header line 2: initials (2), program (8), date and time (10), then the dimension code
    lines = [title, f"  {'ecd_chem':8s}{'':10s}3D", "",
             f"{len(atoms):3d}{len(bonds):3d}  0  0  0  0  0  0  0  0999 V2000"]
    for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions):
        lines.append(f"{x:10.4f}{y:10.4f}{z:10.4f} {s:<3s} 0  0  0  0  0  0  0  0  0  0  0  0")
    lines += [f"{i + 1:3d}{j + 1:3d}{order:3d}  0" for i, j, order in bonds]
    charged = [(k + 1, int(round(q))) for k, q in enumerate(atoms.get_initial_charges())
               if round(q)]
    for start in range(0, len(charged), 8):
        chunk = charged[start:start + 8]
        lines.append(f"M  CHG{len(chunk):3d}" + "".join(f"{a:4d}{q:4d}" for a, q in chunk))
    lines.append("M  END")
    for key in ("rank", "energy", "relative_kcal_mol", "boltzmann_weight", "smiles"):
        if key in atoms.info:
            label = "energy_eV" if key == "energy" else key
            lines += [f">  <{label}>", str(atoms.info[key]), ""]
    return "\n".join(lines) + "\n$$$$\n"
