"""ConformerSearch: many ECD walkers find the low minima of a molecule or cluster.

Each walker alternates two modes, all walkers advancing together through one
batched evaluation per step (one ANI forward pass for W walkers):

* **excursion** -- ECD (BBI by default) from the walker's home minimum with an
  extra energy dE: energy conservation lets it climb at most dE above home, so
  it crosses every barrier lower than that; bounces every ``bounce_every`` steps
  make the path chaotic. In Cartesian space (clusters) the first push goes
  along the home minimum's soft modes, which lead over its low saddles, less
  the directions in which recent excursions from that home reached known
  minima; in
  torsion space (flexible molecules) it goes on one torsion drawn at random,
  methyl rotors less often, so the energy crosses its barrier. Molecules with
  a puckered ring move in Cartesians instead, pushed along one hinge (a
  torsion, or a ring corner's flap) and not bounced, so that the ring can
  change its pucker on a long coherent path (``ring_flips``). A molecule's
  excursion runs all its steps and is harvested at its lowest point after
  the first third (near low V the walker slows down, so that is a good place
  to look for a basin); a cluster's ends at the third dip of the energy along
  its path, where the walker has crossed into a basin (the rule of minima
  hopping), and is harvested there.
* **quench** -- batched L-BFGS from that point down to ``quench_fmax``
  (molecules: preconditioned by a bonded model Hessian, so groups turn about
  their bonds in long steps); a quench
  that cannot become the new lowest minimum may stop at ``screen_fmax``, one
  heading into a known minimum earlier, and a cluster's as soon as every atom
  is back near where it was at home.

Every quenched minimum is checked (molecules: same bond topology as the input,
else it is discarded) and deduplicated (molecules: RMSD after alignment with
permutations of topologically equivalent atoms, plus an energy gate; clusters:
energy and sorted pair distances). Walker policy: the walker moves home to the
new minimum when it is lower (a single walker on a cluster: also when it is
less than an adaptive ediff higher, as in minima hopping); dE grows by ``energy_growth`` whenever an
excursion lands in an already known minimum (more energy is needed to get out)
and shrinks when it finds a new one or breaks a bond; a walker whose home
has not moved for ``home_patience`` excursions (at a funnel's bottom) takes
its next new landing as home, however high, and descends afresh; one whose
last ``restart_after`` excursions all came back home starts over from a fresh
start. With
``home_policy='archive'`` (the default for a single walker on a molecule) dE
belongs to the home minimum, and the walker leaves a home whose dE has grown to
``leave_at`` x dE0 for a known minimum drawn by energy and by how little its
surroundings have been explored, so a conformer reached through a higher one
(an O-H...O bond after a gauche turn) is found without the walker boiling at
its first home. Force calls of both modes, the final refinement and the very
first evaluation all count against ``max_force_calls``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms

from . import dynamics as ecd
from .calculators.base import Evaluator, as_batch_model
from .structures import (KCAL_PER_MOL, InputError, check_atoms, atomic_write, boltzmann_weights, bond_graph,
                         CartesianSpace, TorsionSpace, cluster_fingerprint, equivalence_classes,
                         largest_displacement, rmsd, same_topology, symmetric_top_ends,
                         write_ensemble)

CHECKPOINT_VERSION = 1
# clusters of at least this many atoms get surface kicks by default (LJ19: a wash; LJ13: a loss)
SURFACE_KICKS_FROM = 20
# a chain torsion turned this far from home (radians) has crossed the barrier
# between staggered wells, 60 degrees from each
CHAIN_TURN = math.radians(60)
# molecule excursions in torsion space, and under ring_flips in Cartesians:
# dE0 (eV), gap (eV) and steps (measured: EXPERIMENTS.md, sessions 14-16 and 41)
TORSION_ENERGY, TORSION_GAP, TORSION_STEPS = 0.5, 0.5, 15
RING_ENERGY = 1.6


@dataclass
class Minimum:
    positions: np.ndarray     # (N, 3) Angstrom
    energy: float             # eV
    found_at: int             # force calls spent when first found
    visits: int = 1
    refined: bool = False
    gradient: np.ndarray | None = None   # (N, 3) eV/A at positions, so refining needs no re-evaluation
    excursion_energy: float = 0.0        # eV, dE of excursions from it (home_policy 'archive')
    curvature: tuple | None = None       # L-BFGS pairs (s, y) its quench left; memory only
    _fingerprint: tuple | None = field(default=None, repr=False)   # (positions, sorted pair distances)

    def fingerprint(self) -> np.ndarray:
        """Sorted pair distances (clusters' dedup), kept until positions are replaced."""
        if self._fingerprint is None or self._fingerprint[0] is not self.positions:
            self._fingerprint = (self.positions, cluster_fingerprint(self.positions))
        return self._fingerprint[1]


@dataclass
class SearchResult:
    """conformers: ascending energy, each with info energy (eV), rank,
    relative_kcal_mol, boltzmann_weight, visits and found_at_force_call; best:
    the lowest; force_calls: every energy+force evaluation used (ecd_calls +
    quench_calls + refine_calls)."""

    conformers: list[Atoms]
    force_calls: int
    ecd_calls: int
    quench_calls: int
    refine_calls: int
    minima_found: int
    wall_time_s: float
    history: list = field(default_factory=list)   # (force_calls, lowest energy) per new best
    trace: list = field(default_factory=list)     # (force_calls, [energy of each walker]) per step
    kind: str = "molecule"
    restarts: int = 0                             # walkers that started over (restart_after)

    @property
    def best(self) -> Atoms:
        return self.conformers[0]

    def table(self, rows: int = 10) -> str:
        """The lowest ``rows`` conformers as text: energy above the lowest,
        Boltzmann weight, landings in each, force calls when first found."""
        lines = ["rank  dE (kcal/mol)  weight  visits  found at call"]
        for c in self.conformers[:rows]:
            info = c.info
            lines.append(f"{info['rank']:4d}  {info['relative_kcal_mol']:13.3f}  "
                         f"{100 * info['boltzmann_weight']:5.1f}%  {info['visits']:6d}  "
                         f"{info['found_at_force_call']:13d}")
        if len(self.conformers) > rows:
            lines.append(f"... and {len(self.conformers) - rows} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary: formula, force calls (total and split), minima
        found, wall time and the ranked conformers (frame = index in the ensemble)."""
        first = self.conformers[0]
        return {
            "atoms": len(first), "formula": first.get_chemical_formula(),
            "force_calls": self.force_calls,
            "force_calls_split": {"ecd": self.ecd_calls, "quench": self.quench_calls,
                                  "refine": self.refine_calls},
            "minima_found": self.minima_found, "restarts": self.restarts,
            "wall_time_s": self.wall_time_s,
            "conformers": [{"rank": c.info["rank"], "energy_eV": c.info["energy"],
                            "relative_kcal_mol": c.info["relative_kcal_mol"],
                            "boltzmann_weight": c.info["boltzmann_weight"],
                            "found_at_force_call": c.info["found_at_force_call"],
                            "visits": c.info["visits"], "frame": i}
                           for i, c in enumerate(self.conformers)]}

    def write(self, path, format=None) -> None:
        """Write the ensemble; format from the extension (xyz, extxyz, traj, pdb, ...)."""
        write_ensemble(path, self.conformers, format=format)


class ConformerSearch:
    """Find the lowest minima of ``atoms`` with ECD walkers.

    The measurements behind each default are in benchmarks/EXPERIMENTS.md.

    atoms: the input structure (molecule or free atomic cluster; no periodic
        cell and no constraints, which the search would not honour).
    calculator: any ASE calculator, a BatchCalculator (ANI, LJ) or a BatchModel;
        None uses ``atoms.calc``.
    walkers: W, walkers advanced together.
    max_force_calls: hard budget of energy+force evaluations, everything included.
    seed: the search's random generator (start perturbations, momenta, bounces).
    starts: optional list of starting structures (e.g. RDKit conformers), used
        round-robin for the walkers; otherwise walker 0 starts at ``atoms`` and the
        others at ``atoms`` rattled by ``start_rattle`` (A; clusters 0.1,
        molecules 0: a rattled molecule's first quench only comes back to the
        input's minimum, once per walker, and the walkers part at their first
        kicks anyway; benchmarks/EXPERIMENTS.md, session 42). Walkers that all
        start at one geometry have it quenched once, alone, and all start
        from its minimum.
    kind: 'molecule', 'cluster' or 'auto' (cluster when all atoms are one element).
    excursion_energy: initial dE above home, adapted per walker between /4 and x8.
        Defaults: 0.5 eV for molecules with rotatable bonds, 1.6 eV for
        molecules with puckered rings (``ring_flips``), 0.3 eV for rigid ones;
        5 for clusters, in the units of LJ with epsilon = 1 (scale it with the
        binding energy per atom for other potentials).
    gap: initial height of the walker above its floor (molecules 0.5 eV, 2 eV
        under ``ring_flips``; clusters 4).
    excursion_steps, dt, gap, bounce_every, method, eta: the ECD excursion
        (steps: clusters 60, molecules 30; dt 0.1; a bounce every 10 steps).
        Molecules with rotatable bonds move in torsion space instead, with
        ``torsion_dt``, at most ``torsion_max_step`` radians per torsion per
        step, and 15 steps; molecules with puckered rings in Cartesians with
        70 steps of 0.2 and no bounces (``ring_flips``).
    excursion_minima: k; an excursion ends at the k-th dip of the energy along
        its path (a point lower than the steps before and after it: the walker
        has crossed into a basin), which its quench starts from; Goedecker's
        minima-hopping rule (mdmin). 0: off, the excursion runs all its steps.
        Clusters 3, molecules 0 (not measured on them).
    harvest_after: fraction of a full-length excursion after which its lowest
        point is sought.
    kick: how an excursion's first momentum direction is drawn: 'isotropic'
        (Gaussian over all coordinates), or 'soft', which puts the energy where
        it leads over low saddles, at no extra force calls. In Cartesian space
        (clusters, rigid molecules), a Gaussian direction, rigid motions
        removed, multiplied ``kick_power`` times by the inverse-Hessian model
        that the L-BFGS quench of the home minimum left behind, so it points
        along the minimum's soft modes. In torsion space, the whole momentum
        goes on ``kick_torsions`` (default 1) torsions drawn at random,
        symmetric tops (CH3) drawn with weight ``top_weight`` against 1, so the
        energy crosses a torsional barrier instead of spreading over all; the
        bounces then turn the walker onto other torsions. Bounces are isotropic,
        except under ``ring_flips``, where kicks and any bounces go along hinges.
    kick_memory: in Cartesian space, a quench that ends in a known minimum
        other than home leaves the direction from home to its end; the kicks
        from that home leave out the last ``kick_memory`` of these directions,
        so excursions stop heading back into the neighbours already found
        (cleared when the home moves). Default 4 for clusters under 'lower',
        else 0 (off): under 'hopping' a refused neighbour is one the walker
        should come back to with a larger ediff, and molecules kick in
        torsion space.
    surface_kicks: clusters only; the probability that an excursion's first
        push goes, instead, wholly to one of the home's least-coordinated atoms
        (neighbours within 1.3x the shortest distance), tangent to the cluster
        there: that atom rolls over the surface into another site (see
        ``dynamics.surface_directions``). Default 0.5 for clusters of at
        least ``SURFACE_KICKS_FROM`` (20) atoms, else 0 (off): on LJ26 they
        cut the calls per success to a fifth; on LJ38 (with
        ``restart_stalled``) fewer runs failed within 2e5 calls, the rest took
        longer, and the mean is unchanged within the noise; on LJ19 they
        changed nothing and on LJ13, one shell round one atom, they cost ~1.3x.
    home_policy: where a walker's next excursion starts. 'lower': its home,
        which moves only to a lower minimum; dE is the walker's. 'archive': the
        same, but dE belongs to the home minimum and, once it has grown to
        ``leave_at`` x the initial dE (excursions keep landing in known
        minima), the walker moves to a known minimum drawn with weight
        exp(-(E - E_lowest)/home_temperature) x (dE0/dE)^2; walkers sharing a
        home each adapt its dE by the k-th root of the factor. 'hopping': minima
        hopping's acceptance (Goedecker 2004): the walker moves home to any
        minimum it lands in that lies less than its ediff above home, ediff
        starting at ``accept_above`` and divided by ``accept_rate`` on a move,
        multiplied on a refusal; each walker hops on its own, the archive
        shared. 'auto' (default): 'hopping' for clusters at every walker
        count, 'archive' for one walker on a molecule, else 'lower'. Hopping
        walkers leave a funnel's bottom by themselves; with ``restart_after``
        they halved LJ38's calls per success at 4 walkers (at 8 walkers LJ26
        pays ~28% for it).
    home_patience: under 'lower', a walker whose home has not moved in this
        many excursions (each one a revisit or a higher minimum: it sits at the
        bottom of a funnel) takes the next new minimum it lands in as its home,
        whatever its energy, and starts a fresh descent from there with dE0.
        The excursions at that point run at the capped dE, so the new home is
        far from the old one. A walker that moves down into a home another
        walker already holds has no patience left: two walkers at one funnel
        bottom would repeat each other's work. 0: never. Default 40 for
        clusters under 'lower', else 0: a 'hopping' walker climbs out by
        itself, and molecules were not measured.
    restart_after: a walker whose last ``restart_after`` excursions all ended
        at its home (the excursions from some homes never leave the home
        basin, whatever the kick or dE, and patience waits for a new landing
        that never comes) starts over: a fresh start drawn as the first ones
        were (``starts`` or the input rattled), quenched, then a new descent
        from dE0 (under 'hopping' with ediff back at ``accept_above``). The
        archive keeps everything found. 0: never. Default 20 for clusters
        under 'lower' and 'hopping' (LJ38 needs it; 10 or 40 were worse),
        else 0 ('archive' and molecules not measured).
    restart_stalled: a walker whose lowest home since its last start has not
        improved in this many landings starts over as ``restart_after`` does
        (a walker that keeps landing in new minima above its best never piles
        up the returns home that ``restart_after`` counts). 0: never. Default
        40 where ``surface_kicks`` is on, else 0: surface-kicked walkers keep
        landing in new minima, and without it LJ38 lost runs (10 of 18 found
        it against 14 with it; benchmarks/EXPERIMENTS.md, sessions 33-34).
    restart_from: where a walker that starts over (``restart_after``,
        ``restart_stalled``) starts: 'start' (default), as the first walkers
        did (``starts``, or the input rattled); 'sphere' (clusters searched
        from the input alone), a fresh random cluster in the ball the input
        fills, so that a walker restarted from a trapped run leaves that
        run's region of configuration space. On LJ38 (4 walkers, 90 runs with
        no cut) it ended the trapped runs (the longest 6.6e5 calls, where two
        had gone past 9e5) but not the mean (109 796 against >= 112 749 calls;
        benchmarks/EXPERIMENTS.md, session 35), so it is not the default.
    accept_above: 'hopping''s starting ediff (eV; clusters 2.0 in LJ units,
        molecules 0.05). accept_rate: its factor (>= 1, default 1.1).
    home_temperature: that draw's temperature (eV; molecules 0.02, about 0.5
        kcal/mol; clusters 0.8 in LJ units).
    ring_flips: a molecule with a puckered ring (some ring atom off the ring's
        plane: not aromatic rings; see ``structures.ring_corners``) explores in
        Cartesians instead of torsion space. Each excursion's push goes along
        one hinge drawn at random: a rotatable bond's torsion or the flap of
        a ring corner (the corner and its substituents turning about the line
        through its two ring neighbours, the way that puckers the corner
        further; symmetric tops weighted ``top_weight``). That rigid motion
        is only the first momentum: the Cartesian dynamics that follows lets
        the rest of the ring give way. A ring changes its pucker (chair,
        boat, twist; ~11 kcal/mol over the half-chair in cyclohexane) only by
        a coherent motion of all its atoms, which rigid turns about bonds as
        coordinates cannot make (a rigid corner flap costs eV), and which
        isotropic bounces broke up: the excursions run 70 steps of dt 0.2 at
        dE0 1.6 eV and gap 2 eV with no bounce, and harvest their lowest
        point after the first third. From the higher chair, axial
        methylcyclohexane (ANI-1x) reaches the equatorial one in every run
        measured (benchmarks/EXPERIMENTS.md, sessions 40-41). A push on a
        rotatable bond runs in torsion space instead (``torsion_pushes``).
        False: torsion space, and each ring
        keeps the pucker of its starts (give ring conformers as ``starts``).
    inversion_stop (degrees): under ``ring_flips``, an excursion ends as soon
        as a ring's pucker has inverted from its pucker at home, every
        endocyclic torsion of that ring having changed sign and lying at least
        this far from planar, and its quench starts there instead of at the
        lowest point of the whole excursion: the walker has crossed into the
        other pucker's basin, where the full excursion's quench ended too in
        the runs traced (session 41).
        Cut the calls to methylcyclohexane's equatorial chair by ~10% at one
        walker and ~30% at four and eight (benchmarks/EXPERIMENTS.md, session
        42). 0: off.
    futility_stop (steps): under ``ring_flips``, an excursion that by this
        step has started no change of conformer (no endocyclic torsion has
        changed sign, and no torsion about a rotatable bond, symmetric tops
        left out, has turned 60 degrees from home) ends there and is
        quenched from its lowest point: from a chair, every excursion that
        inverted the ring had changed a ring torsion's sign by step 32, and one
        that has done neither by 35 rarely does either later. Judging the
        chain torsions too keeps the excursions that are turning a side chain
        (n-butylcyclohexane lost a run when only the ring was judged).
        Default 35 of the 70 steps; 0: off (benchmarks/EXPERIMENTS.md, session 43).
    torsion_pushes: under ``ring_flips``, an excursion whose push turns a
        rotatable bond (rather than flapping a ring corner) runs in torsion
        space, as a ring-free molecule's: the momentum all on that torsion,
        15 steps of ``torsion_dt``, a bounce at step 10, gap 0.5 eV, dE scaled
        by 0.5/1.6 from the ring excursions'. A chain turns there in a few
        long steps where the 70-step Cartesian excursion was slow and often
        ended a rotamer short. Default True: n-butylcyclohexane 74 of 75 runs
        at 692 calls per success against 72 of 75 at 1 288, cyclohexanol 325
        against 412 (benchmarks/EXPERIMENTS.md, session 43). False: every
        excursion of a ring molecule in Cartesians.
    quench_fmax, refine_fmax (eV/A): quench and final refinement thresholds.
    screen_fmax (eV/A): a quench whose energy stays above the lowest known
        minimum (by more than the archive's energy gate) may stop at this looser
        threshold: it only has to tell which minimum it reached. Clusters 0.03;
        molecules: quench_fmax (no screening).
    revisit_fmax (eV/A): a quench stops as soon as its largest force is below
        this (0: never) and it already matches a known minimum that is no lower
        than the walker's home (by more than the archive's energy gate), within
        ``revisit_rmsd`` in geometry and at most revisit_fmax x 1 A above it in
        energy: a revisit, known without converging. Clusters 0.3; molecules 0
        (off: measured on, it slowed alanine dipeptide; see benchmarks/EXPERIMENTS.md).
    revisit_rmsd: that geometric match, in the dedup's measure (molecules:
        RMSD in A; clusters: largest difference of sorted pair distances);
        default 0.4 x rmsd_threshold. On molecules at 0.3 eV/A a match that
        tight almost never fires (the geometry can still lie tenths of an A
        from the minimum along a soft torsion); 0.25 A does.
    home_radius: a quench whose atoms all lie within this distance (A) of
        where they were at the home its excursion left from (same atoms, best
        rotation) has come back home and stops there, at any force (0: off).
        Clusters: rmsd_threshold (a return home then costs half a full
        quench); molecules 0 (not measured).
    precon: the quench's preconditioner, the L-BFGS model's initial inverse
        Hessian, from which soft-mode kicks are also taken: 'bonded' (a
        model Hessian of the input's bonds, angles and dihedrals, see
        ``dynamics.BondedPreconditioner``), 'exp' (the Exp preconditioner of
        Packwood et al., from interatomic distances alone), True (the kind's
        own: 'bonded' for molecules, 'exp' for clusters) or False (none).
        Default True: 'bonded' quenches turned torsions in 1.6-2.6x fewer
        calls than 'exp'; on clusters 'exp' beats none.
    energy_window (kcal/mol): conformers kept above the lowest.
    energy_tolerance (kcal/mol), rmsd_threshold (A): duplicates are closer in both.
    merge_top_rotamers: report once, the lowest, conformers that differ only
        in how their symmetric tops (CH3, CF3) are turned: the RMSD
        without the tops' end atoms is below rmsd_threshold, whatever the
        energies. A flat methyl rotor otherwise leaves one conformer as
        several records up to ~0.4 kcal/mol apart (alanine dipeptide, ANI-1x).
    temperature (K): Boltzmann weights; 0 puts all the weight on the lowest.
    target_energy: stop as soon as a minimum at or below it is found (benchmarks).
    checkpoint: JSON path written atomically every ``checkpoint_every`` steps; an
        existing one is resumed. Writes are spaced out so that they take at most
        ~5% of the wall time (a cheap potential with thousands of minima would
        otherwise spend most of its time writing).
    """

    def __init__(self, atoms: Atoms, calculator=None, walkers: int = 8,
                 max_force_calls: int = 5000, seed: int = 0, *, starts=None, kind="auto",
                 excursion_energy=None, excursion_steps=None, excursion_minima=None,
                 energy_growth=1.5,
                 harvest_after=1 / 3, dt=None, gap=None, bounce_every=None,
                 torsion_dt=0.9, torsion_max_step=0.35, home_policy="auto", home_temperature=None,
                 leave_at=4.0, home_patience=None, accept_above=None, accept_rate=1.1, method="bbi",
                 eta=1.0, max_step=0.2, kick="soft", kick_power=3, kick_memory=None,
                 kick_torsions=1, surface_kicks=None, restart_after=None, restart_stalled=None,
                 restart_from="start", top_weight=0.3, ring_flips=True, inversion_stop=15.0,
                 futility_stop=35, torsion_pushes=True,
                 quench_fmax=None, screen_fmax=None, revisit_fmax=None, revisit_rmsd=None,
                 home_radius=None, quench_steps=500, precon=None,
                 refine_fmax=None,
                 energy_window=6.0, energy_tolerance=0.05, rmsd_threshold=0.125,
                 merge_top_rotamers=True,
                 temperature=298.15, start_rattle=None, target_energy=None,
                 checkpoint=None, checkpoint_every=25, refine_reserve=0.1):
        if atoms is None or len(atoms) < 2:
            raise InputError("ConformerSearch needs a structure of at least 2 atoms")
        check_atoms(atoms)
        if atoms.pbc.any():
            raise InputError("ConformerSearch searches molecules and free clusters; this input "
                             f"is periodic (pbc={atoms.pbc.tolist()})")
        if atoms.constraints:
            names = ", ".join(sorted({type(c).__name__ for c in atoms.constraints}))
            raise InputError(f"ConformerSearch does not apply constraints ({names}): remove them "
                             "(atoms.set_constraint()), or relax with ECDOpt, which does")
        if int(walkers) < 1:
            raise ValueError(f"walkers must be >= 1, got {walkers}")
        calculator = calculator if calculator is not None else atoms.calc
        if calculator is None:
            raise ValueError("ConformerSearch needs a calculator (or atoms.calc)")
        if int(max_force_calls) < 2 * int(walkers):
            raise ValueError(f"max_force_calls={max_force_calls} cannot pay for one step of "
                             f"{walkers} walkers (needs at least {2 * int(walkers)})")
        if kind == "auto":
            kind = "cluster" if len(set(atoms.numbers)) == 1 else "molecule"
        if kind not in ("molecule", "cluster"):
            raise ValueError(f"kind must be 'molecule', 'cluster' or 'auto', got {kind!r}")
        for name, value in (("energy_window", energy_window), ("rmsd_threshold", rmsd_threshold),
                            ("energy_tolerance", energy_tolerance)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        cluster = kind == "cluster"
        self.atoms = atoms.copy()
        self.atoms.calc = None
        self.kind = kind
        self.model = as_batch_model(calculator)
        self.model.check(self.atoms)
        self.W = int(walkers)
        self.max_force_calls = int(max_force_calls)
        self.seed = int(seed)
        self.starts = starts
        self.start_rattle = (0.1 if cluster else 0.0) if start_rattle is None else start_rattle
        self.excursion_energy = excursion_energy or (5.0 if cluster else 0.3)
        self.excursion_steps = int(excursion_steps or (60 if cluster else 30))
        self.excursion_minima = int((3 if cluster else 0) if excursion_minima is None
                                    else excursion_minima)
        if self.excursion_minima < 0:
            raise ValueError(f"excursion_minima must be >= 0 (0: off), got {excursion_minima}")
        self.energy_growth = energy_growth
        self.harvest_after = float(harvest_after)
        if home_policy == "auto":
            home_policy = "hopping" if cluster else "lower" if int(walkers) > 1 else "archive"
        if home_policy not in ("lower", "archive", "hopping"):
            raise ValueError(f"home_policy must be 'auto', 'lower', 'archive' or 'hopping', "
                             f"got {home_policy!r}")
        self.home_policy = home_policy
        self.home_temperature = float((0.8 if cluster else 0.02) if home_temperature is None
                                      else home_temperature)
        self.leave_at = float(leave_at)
        default_patience = 40 if cluster and home_policy == "lower" else 0   # measured: EXPERIMENTS.md
        self.home_patience = int(default_patience if home_patience is None else home_patience)
        if self.home_patience < 0:
            raise ValueError(f"home_patience must be >= 0 (0: never), got {home_patience}")
        self.accept_above = float((2.0 if cluster else 0.05) if accept_above is None else accept_above)
        self.accept_rate = float(accept_rate)
        if not (self.accept_above > 0 and self.accept_rate >= 1):
            raise ValueError(f"accept_above must be > 0 and accept_rate >= 1, got "
                             f"{accept_above} and {accept_rate}")
        if not (self.home_temperature > 0 and self.leave_at >= 1):
            raise ValueError(f"home_temperature must be > 0 and leave_at >= 1, got "
                             f"{home_temperature} and {leave_at}")
        if kick not in ("isotropic", "soft"):
            raise ValueError(f"kick must be 'isotropic' or 'soft', got {kick!r}")
        self.kick, self.kick_power = kick, int(kick_power)
        # a surface atom rolls over a core into another site; a cluster of a
        # single shell (LJ13) has no such move to make (measured: EXPERIMENTS.md)
        default_surface = 0.5 if cluster and len(atoms) >= SURFACE_KICKS_FROM else 0.0
        self.surface_kicks = float(default_surface if surface_kicks is None else surface_kicks)
        if not 0 <= self.surface_kicks <= 1:
            raise ValueError(f"surface_kicks must be a probability in [0, 1], got {surface_kicks}")
        if self.surface_kicks and not cluster:
            raise ValueError("surface_kicks is for atomic clusters (kind='cluster'): a molecule's "
                             "least-coordinated atoms are its hydrogens")
        default_restart = 20 if cluster and home_policy in ("lower", "hopping") else 0   # measured: EXPERIMENTS.md
        self.restart_after = int(default_restart if restart_after is None else restart_after)
        if self.restart_after < 0:
            raise ValueError(f"restart_after must be >= 0 (0: never), got {restart_after}")
        # surface-kicked walkers keep landing in new minima, so restart_after rarely fires
        self.restart_stalled = int((40 if self.surface_kicks else 0) if restart_stalled is None
                                   else restart_stalled)
        if self.restart_stalled < 0:
            raise ValueError(f"restart_stalled must be >= 0 (0: never), got {restart_stalled}")
        if restart_from not in ("start", "sphere"):
            raise ValueError(f"restart_from must be 'start' or 'sphere', got {restart_from!r}")
        if restart_from == "sphere" and (not cluster or starts):
            raise ValueError("restart_from='sphere' is for atomic clusters searched from the "
                             "input alone (kind='cluster', no starts)")
        self.restart_from = restart_from
        default_memory = 4 if cluster and home_policy == "lower" else 0    # measured: EXPERIMENTS.md
        self.kick_memory = int(default_memory if kick_memory is None else kick_memory)
        if self.kick_memory < 0:
            raise ValueError(f"kick_memory must be >= 0 (0: off), got {kick_memory}")
        if int(kick_torsions) < 1 or not top_weight >= 0:
            raise ValueError(f"kick_torsions must be >= 1 and top_weight >= 0, got "
                             f"{kick_torsions} and {top_weight}")
        self.hp = ecd.ECDParams(method=method, dt=0.1 if dt is None else dt, eta=eta,
                                gap=gap or (4.0 if cluster else 0.5),
                                bounce_every=10 if bounce_every is None else int(bounce_every),
                                fixed_bounces=10 ** 9, max_step=max_step)
        if precon is None:               # measured: EXPERIMENTS.md
            precon = True
        if precon is True:
            precon = "exp" if cluster else "bonded"
        self.topology = None if cluster else bond_graph(self.atoms)
        self.qp = ecd.QuenchParams(memory=30, max_step=max_step,
                                   precon=ecd.quench_preconditioner(precon, self.topology))
        self.quench_fmax = quench_fmax or (0.01 if cluster else 0.05)
        if screen_fmax is None:
            screen_fmax = 0.03 if cluster else self.quench_fmax
        if not screen_fmax > 0:
            raise ValueError(f"screen_fmax must be > 0, got {screen_fmax}")
        self.screen_fmax = max(self.quench_fmax, screen_fmax)
        self.revisit_fmax = float((0.3 if cluster else 0.0) if revisit_fmax is None else revisit_fmax)
        if not self.revisit_fmax >= 0:
            raise ValueError(f"revisit_fmax must be >= 0 (0: off), got {revisit_fmax}")
        self.revisit_rmsd = float(0.4 * rmsd_threshold
                                  if revisit_rmsd is None else revisit_rmsd)
        if not self.revisit_rmsd > 0:
            raise ValueError(f"revisit_rmsd must be > 0, got {revisit_rmsd}")
        self.home_radius = float((rmsd_threshold if cluster else 0.0)
                                 if home_radius is None else home_radius)
        if not self.home_radius >= 0:
            raise ValueError(f"home_radius must be >= 0 (0: off), got {home_radius}")
        self.quench_steps = int(quench_steps)
        self.refine_fmax = refine_fmax or (1e-3 if cluster else 0.01)
        self.energy_window = energy_window * KCAL_PER_MOL
        self.energy_tolerance = energy_tolerance * KCAL_PER_MOL
        self.rmsd_threshold = rmsd_threshold
        self.temperature = temperature
        self.target_energy = target_energy
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)
        self._clock = time.perf_counter      # replaceable in tests
        self._next_save = -math.inf
        self.refine_reserve = refine_reserve
        self.merge_top_rotamers = bool(merge_top_rotamers) and not cluster
        self.top_ends = (symmetric_top_ends(self.topology, self.atoms.numbers)
                         if self.merge_top_rotamers else np.zeros(len(atoms), bool))
        # molecules explore in torsion space, where conformers differ and no
        # stiff bond limits the step; clusters (and rigid molecules) in Cartesians.
        # A puckered ring changes its pucker by a coherent motion of the whole
        # ring that no rigid rotation gives (rigid corner flaps cost eV), so
        # molecules with one explore in Cartesians, pushed along their hinges
        hinges = None if cluster else TorsionSpace(
            self.topology, self.atoms.numbers, self.atoms.positions if ring_flips else None)
        self.hinges = hinges if hinges is not None and hinges.corner.any() else None
        self.inversion_stop = float(inversion_stop)
        self.futility_stop = int(futility_stop)
        self.space = (hinges if hinges is not None and hinges.count and self.hinges is None
                      else CartesianSpace())
        if self.hinges is not None:
            self.excursion_steps = int(excursion_steps or 70)
            self.excursion_energy = excursion_energy or RING_ENERGY
            # a ring flips only on a long coherent path, and crosses from the
            # twist-boats into a chair more often on a high floor (measured: EXPERIMENTS.md)
            self.hp = dataclasses.replace(self.hp, dt=0.2 if dt is None else dt, gap=gap or 2.0,
                                          bounce_every=0 if bounce_every is None else int(bounce_every))
            weights = np.where(self.hinges.symmetric_top, float(top_weight), 1.0)
            self.hinge_weights = torch.tensor(weights)
            self.hinge_kick = (ecd.hinge_directions(self.hinges.tangents, self.hinge_weights,
                                                    self.hinges.pucker_signs)
                               if self.kick == "soft" else ecd.isotropic)
        # under ring_flips, an excursion pushed along a rotatable bond turns a chain,
        # which torsion space does in a few long steps: it runs there, with the
        # torsion-space settings of a ring-free molecule (measured: EXPERIMENTS.md)
        self.bond_space = None
        if self.hinges is not None and torsion_pushes and (~self.hinges.corner).any():
            self.bond_space = TorsionSpace(self.topology, self.atoms.numbers)
            self.torsion_hp = dataclasses.replace(self.hp, dt=torsion_dt, max_step=torsion_max_step,
                                                  gap=TORSION_GAP, bounce_every=10)
            self.torsion_push_steps = TORSION_STEPS
            self.torsion_push_scale = TORSION_ENERGY / RING_ENERGY
        if isinstance(self.space, TorsionSpace):
            self.hp = dataclasses.replace(self.hp, dt=torsion_dt, max_step=torsion_max_step)
            self.excursion_steps = int(excursion_steps or TORSION_STEPS)
            self.excursion_energy = excursion_energy or TORSION_ENERGY
            weights = np.where(self.space.symmetric_top, float(top_weight), 1.0)
            if not weights.any():       # every torsion a symmetric top: draw among all
                weights = np.ones_like(weights)
            self.torsion_kick = ecd.sparse_directions(torch.tensor(weights), int(kick_torsions))
        self.classes = (np.zeros(len(atoms), int) if cluster
                        else equivalence_classes(self.atoms.numbers, self.topology))
        self._check_settings()
        self.evaluate = Evaluator(self.model, self.atoms)
        self.observers: list = []

    def _check_settings(self) -> None:
        """Raise a ValueError for a setting, defaults resolved, that no search can use."""
        def finite(*values):
            return all(math.isfinite(float(v)) for v in values)
        fmaxes = (self.quench_fmax, self.refine_fmax)
        checks = [
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (finite(self.excursion_energy) and self.excursion_energy > 0,
             f"excursion_energy must be > 0, got {self.excursion_energy}"),
            (self.excursion_steps >= 1, f"excursion_steps must be >= 1, got {self.excursion_steps}"),
            (finite(self.energy_growth) and self.energy_growth >= 1,
             f"energy_growth must be >= 1, got {self.energy_growth}"),
            (0 <= self.harvest_after <= 1, f"harvest_after must lie in [0, 1], got {self.harvest_after}"),
            (self.kick_power >= 0, f"kick_power must be >= 0, got {self.kick_power}"),
            (finite(*fmaxes) and min(fmaxes) > 0,
             f"quench_fmax and refine_fmax must be > 0, got {fmaxes}"),
            (self.quench_steps >= 1, f"quench_steps must be >= 1, got {self.quench_steps}"),
            (finite(self.start_rattle) and self.start_rattle >= 0,
             f"start_rattle must be >= 0 (A), got {self.start_rattle}"),
            (finite(self.temperature) and self.temperature >= 0,
             f"temperature must be >= 0 K (0: all weight on the lowest), got {self.temperature}"),
            (self.target_energy is None or not math.isnan(self.target_energy),
             "target_energy must be a number or None, got nan"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (finite(self.inversion_stop) and 0 <= self.inversion_stop < 90,
             f"inversion_stop must lie in [0, 90) degrees (0: off), got {self.inversion_stop}"),
            (self.futility_stop >= 0, f"futility_stop must be >= 0 (0: off), got {self.futility_stop}"),
            (0 <= self.refine_reserve < 1, f"refine_reserve must lie in [0, 1), got {self.refine_reserve}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def attach(self, function, interval: int = 1) -> None:
        """Call ``function(search)`` every ``interval`` steps of all walkers
        (progress bars, custom logging); ``search.calls``, ``search.lowest``
        and ``search.minima`` describe the progress."""
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.observers.append((function, int(interval)))

    @property
    def lowest(self) -> float:
        """Lowest minimum energy found so far (eV); inf before the first."""
        return min((m.energy for m in self.minima), default=float("inf"))

    # -- archive of minima ------------------------------------------------------------------
    def _same(self, a: Minimum, b: Minimum, energy_gate, threshold=None) -> bool:
        if abs(a.energy - b.energy) > energy_gate:
            return False
        threshold = threshold or self.rmsd_threshold
        if self.kind == "cluster":
            return np.abs(a.fingerprint() - b.fingerprint()).max() < threshold
        return rmsd(a.positions, b.positions, self.classes, below=threshold) < threshold

    def _known_basin(self, w: int) -> int | None:
        """The known minimum, no lower than walker w's home, that w's unfinished
        quench is already close to (see ``revisit_fmax``), or None."""
        probe = Minimum(self.quench.x[w].numpy(), float(self.quench.f[w]), self.calls)
        home = float(self.home_f[w])
        for i, known in enumerate(self.minima):
            rise = probe.energy - known.energy        # the quench still descends towards it
            if (known.energy >= home - self.archive_gate and -self.archive_gate <= rise <= self.revisit_fmax
                    and self._same(known, probe, math.inf, threshold=self.revisit_rmsd)):
                return i
        return None

    def _back_home(self, w: int) -> bool:
        """Walker w's unfinished quench has every atom within ``home_radius``
        of where it was at home (same atom order: the walker left from there),
        after the best rotation, whatever the force."""
        return self.home_index[w] >= 0 and largest_displacement(
            self.quench.x[w].numpy(), self.home_x[w].numpy()) < self.home_radius

    def _top_rotamer(self, a: Minimum, b: Minimum) -> bool:
        """a and b differ at most in how their symmetric tops are turned."""
        if not self.top_ends.any():
            return False
        keep = ~self.top_ends
        return rmsd(a.positions[keep], b.positions[keep], self.classes[keep],
                    below=self.rmsd_threshold) < self.rmsd_threshold

    @property
    def archive_gate(self) -> float:
        """Energy gate (eV) of the dedup during the search: looser than
        energy_tolerance, which the final dedup of refined minima uses."""
        return 10 * self.energy_tolerance

    def _archive(self, positions, energy, gradient) -> tuple[bool, int]:
        """Add a minimum unless known; (is_new, index)."""
        probe = Minimum(positions.copy(), float(energy), self.calls, gradient=gradient.copy(),
                        excursion_energy=float(self.excursion_energy))
        for i, known in enumerate(self.minima):
            if self._same(known, probe, self.archive_gate):
                known.visits += 1
                if probe.energy < known.energy:
                    known.positions, known.energy = probe.positions, probe.energy
                    known.gradient = probe.gradient
                return False, i
        self.minima.append(probe)
        if not self.history or energy < self.history[-1][1]:
            self.history.append((self.calls, float(energy)))
        return True, len(self.minima) - 1

    # -- state ------------------------------------------------------------------------------
    @property
    def calls(self) -> int:
        return self.evaluate.calls

    def _start_positions(self) -> torch.Tensor:
        rng = np.random.default_rng(self.seed)
        if self.starts:
            frames = [np.asarray(s.positions, float) for s in self.starts]
            for s in self.starts:
                if list(s.numbers) != list(self.atoms.numbers):
                    raise ValueError("every start structure must have the input's atoms in order")
            x = [frames[w % len(frames)] for w in range(self.W)]
        else:
            x = [self.atoms.positions + (rng.normal(0, self.start_rattle, self.atoms.positions.shape)
                                         if w else 0.0) for w in range(self.W)]
        return torch.tensor(np.stack(x))

    def _fresh(self):
        self.minima: list[Minimum] = []
        self.history: list = []
        self.trace: list = []
        self.trace_stride = 1
        self.ecd_calls = self.quench_calls = self.refine_calls = 0
        self.restarts = 0
        self.rng = torch.Generator().manual_seed(self.seed)
        x = self._start_positions()
        if self.W > 1 and bool((x == x[:1]).all()):
            # every walker starts at one geometry: quench it once, not W times over
            x, f, g = (t.expand(self.W, *t.shape[1:]).clone() for t in self._quench_one(x[:1]))
        else:
            f, g = self._safe(self.evaluate(x))
            self.quench_calls += self.W
        q = self.space.initial(x)
        self.walkers = ecd.init(q, f, self.space.gradient(x, g), self.hp, rng=self.rng)
        self.in_torsion = torch.zeros(self.W, dtype=torch.bool)   # the excursion runs in bond_space
        if self.bond_space is not None:
            self.torsion_walkers = ecd.init(self.bond_space.initial(x), f,
                                            self.bond_space.gradient(x, g), self.torsion_hp,
                                            rng=self.rng)
        self.quench = ecd.quench_init(x, f, g, self.qp)
        # Cartesian geometry and gradient of each walker, now and at its lowest point
        self.cart, self.cart_g = x.clone(), g.clone()
        self.best_cart, self.best_cart_g = x.clone(), g.clone()
        self.exploring = torch.zeros(self.W, dtype=torch.bool)
        self.home_x, self.home_f, self.home_g = x.clone(), f.clone(), g.clone()
        self.energy = torch.full((self.W,), float(self.excursion_energy), dtype=torch.float64)
        self.ediff = torch.full((self.W,), self.accept_above, dtype=torch.float64)
        # the L-BFGS curvature pairs the quench of each home left (zero: none)
        self.home_s, self.home_y = self.quench.s.clone(), self.quench.y.clone()
        self.home_index = [-1] * self.W       # each home's place in self.minima (-1: not archived)
        self.iteration = 0
        self.known_exits = [[] for _ in range(self.W)]
        self.stale = [0] * self.W             # excursions since the walker's home last moved
        self.home_returns = [0] * self.W      # excursions in a row that ended at home
        self.own_lowest = [math.inf] * self.W  # each walker's lowest home since its last start
        self.stalled = [0] * self.W           # landings since that last improved
        self._fresh_path()

    def _quench_one(self, x):
        """Quench the geometry x (1, N, 3) alone to quench_fmax, leaving the
        walkers' first step in the budget; (x, f, g) where it stopped."""
        f, g = self._safe(self.evaluate(x))
        self.quench_calls += 1
        state, _, used = ecd.quench_until(
            ecd.quench_init(x, f, g, self.qp), lambda xs: self._safe(self.evaluate(xs)),
            self.quench_fmax, self.quench_steps, self.qp,
            budget=max(0, self._main_budget() - self.calls - self.W))
        self.quench_calls += int(used.sum())
        return state.x, state.f, state.g

    def _fresh_path(self):
        """The energy two points back on each excursion path, and its dips so
        far, as if every walker had just left home (home is never a dip)."""
        self.before_last_f = torch.full((self.W,), -math.inf, dtype=torch.float64)
        self.dips = torch.zeros(self.W, dtype=torch.long)
        self.stirred = torch.zeros(self.W, dtype=torch.bool)

    @staticmethod
    def _safe(fg):
        """Replace non-finite results by +inf energy / zero gradient and flag them."""
        f, g = fg
        bad = ~torch.isfinite(f) | ~torch.isfinite(g).flatten(1).all(1)
        f = torch.where(bad, torch.full_like(f, float("inf")), f)
        g = torch.where(bad[:, None, None], torch.zeros_like(g), g)
        return f, g

    # -- walker transitions -----------------------------------------------------------------------
    def _start_excursions(self, rows: list[int]):
        if not rows:
            return
        idx = torch.tensor(rows)
        fresh = []
        for w in rows:
            hp = dataclasses.replace(self.hp, delta_energy=self._excursion_energy(w))
            x, f, g = self.home_x[w:w + 1], self.home_f[w:w + 1], self.home_g[w:w + 1]
            state = ecd.init(self.space.initial(x), f, self.space.gradient(x, g), hp, rng=self.rng)
            self.in_torsion[w] = False
            if self.hinges is not None and self.kick == "soft":
                # along one hinge: a corner's flap, or a bond's turn, which
                # torsion space makes (torsion_pushes)
                pick, sign = ecd.draw_hinges(self.hinge_weights, 1, self.rng, x.dtype, x.device)
                push = ecd.hinge_push(x, self.hinges.tangents(x), pick, sign,
                                      self.hinges.pucker_signs)
                fresh.append(ecd.bounce(state, torch.tensor([True]), lambda q, rng: push))
                if self.bond_space is not None and not self.hinges.corner[int(pick)]:
                    self._push_in_torsions(w, int(pick), float(sign))
            else:
                # a random direction at a minimum
                fresh.append(ecd.bounce(state, torch.tensor([True]), self._directions([w])))
        merged = fresh[0] if len(fresh) == 1 else dataclasses.replace(fresh[0], **{
            f.name: torch.cat([getattr(s, f.name) for s in fresh])
            for f in dataclasses.fields(fresh[0]) if f.name != "rng"})
        self.walkers = ecd.put_rows(self.walkers, idx, merged)
        for name, value in (("cart", self.home_x), ("cart_g", self.home_g),
                            ("best_cart", self.home_x), ("best_cart_g", self.home_g)):
            getattr(self, name)[idx] = value[idx]
        self.exploring[idx] = True
        self.before_last_f[idx] = -math.inf
        self.dips[idx] = 0
        self.stirred[idx] = False

    def _push_in_torsions(self, w: int, bond: int, sign: float):
        """Run walker w's excursion, pushed along rotatable bond ``bond`` (a
        hinge index; bonds come first, so also the bond_space's), in torsion
        space: all the momentum on that torsion, the way ``sign`` says, and dE
        scaled from the ring excursions' to torsion space's."""
        x, f, g = self.home_x[w:w + 1], self.home_f[w:w + 1], self.home_g[w:w + 1]
        self.in_torsion[w] = True
        hp = dataclasses.replace(self.torsion_hp,
                                 delta_energy=self._excursion_energy(w) * self.torsion_push_scale)
        state = ecd.init(self.bond_space.initial(x), f, self.bond_space.gradient(x, g), hp,
                         rng=self.rng)
        direction = torch.zeros(1, self.bond_space.count, 1, dtype=x.dtype)
        direction[0, bond] = sign
        state = ecd.bounce(state, torch.tensor([True]), lambda q, rng: direction)
        self.torsion_walkers = ecd.put_rows(self.torsion_walkers, torch.tensor([w]), state)

    def _directions(self, rows):
        """How walkers ``rows`` draw new momentum directions (see ``kick``,
        ``kick_memory`` and ``surface_kicks``)."""
        if not isinstance(self.space, CartesianSpace):
            return ecd.isotropic if self.kick == "isotropic" else self.torsion_kick
        if self.hinges is not None:
            return self.hinge_kick
        draw = (ecd.isotropic if self.kick == "isotropic" else
                ecd.soft_directions(self.home_s[rows], self.home_y[rows], self.kick_power,
                                    precon=self.qp.precon))
        exits = [self.known_exits[w] for w in rows]
        draw = ecd.avoiding(draw, exits) if any(exits) else draw
        return ecd.surface_directions(draw, self.surface_kicks) if self.surface_kicks else draw

    @property
    def ring_flips(self) -> bool:
        """Whether this search flips rings (a molecule with a puckered ring,
        ``ring_flips`` on): it explores in Cartesians along hinges."""
        return self.hinges is not None

    @property
    def _bounce_directions(self):
        """How bounces redirect the walkers: isotropically, except in a ring
        molecule's Cartesian space, where an isotropic push goes mostly into
        bond stretches and breaks the ring's coherent motion: along a hinge."""
        return self.hinge_kick if self.hinges is not None else ecd.isotropic

    def _start_quenches(self, rows: list[int], x, f, g):
        if not rows:
            return
        idx = torch.tensor(rows)
        self.quench = ecd.put_rows(self.quench, idx, ecd.quench_init(x, f, g, self.qp))
        self.exploring[idx] = False

    def _keeps_topology(self, positions) -> bool:
        """Whether ``positions`` (n, 3) have the input's bonds (always for clusters)."""
        if self.topology is None:
            return True
        probe = self.atoms.copy()
        probe.positions = positions
        return same_topology(bond_graph(probe), self.topology)

    def _finish_quench(self, w: int):
        """Walker w's quench ended: check, archive, adapt dE, choose the next home."""
        x = self.quench.x[w].numpy()
        f = float(self.quench.f[w])
        if not math.isfinite(f):
            return
        if not self._keeps_topology(x):
            self._adapt_energy(w, 1 / self.energy_growth)
            return
        is_new, index = self._archive(x, f, self.quench.g[w].numpy())
        self._count_home_return(w, index)
        if not is_new:
            self._remember_exit(w, index)
        if self.home_policy != "lower" and isinstance(self.space, CartesianSpace):
            self.minima[index].curvature = (self.quench.s[w].clone(), self.quench.y[w].clone())
        self._adapt_energy(w, 1 / self.energy_growth ** 0.5 if is_new else self.energy_growth)
        home = float(self.home_f[w])
        restless = self._restless(w) and is_new
        if self.home_policy == "hopping":
            self._hop(w, index)
        elif f < home - 1e-9 or not math.isfinite(home) or restless:
            self.home_x[w], self.home_f[w], self.home_g[w] = self.quench.x[w], f, self.quench.g[w]
            self.home_s[w], self.home_y[w] = self.quench.s[w], self.quench.y[w]
            self.home_index[w] = index
            self.known_exits[w] = []
            self.stale[w] = 0
            if restless:                 # a fresh descent: dE starts over
                self.energy[w] = self.excursion_energy
            elif self._shared_home(w):   # another walker already works this funnel bottom
                self.stale[w] = self.home_patience
        else:
            self._leave_exhausted_home(w)
            self.stale[w] += 1

    def _count_home_return(self, w: int, index: int):
        """Walker w's excursion ended in minimum ``index``: one more in a row at home, or none."""
        self.home_returns[w] = self.home_returns[w] + 1 if index == self.home_index[w] else 0

    def _count_stall(self, w: int):
        """Walker w landed: one more landing without a new lowest home of its own, or none."""
        home = float(self.home_f[w])
        if home < self.own_lowest[w] - 1e-9:
            self.own_lowest[w], self.stalled[w] = home, 0
        else:
            self.stalled[w] += 1

    def _restart(self, rows: list[int]) -> list[int]:
        """Walkers ``rows`` start over from a fresh start drawn as at the
        beginning (a start structure, or the input rattled by ``start_rattle``):
        quenched, then a new home with dE0. Returns the rows that could not
        (budget spent, or the start failed to evaluate)."""
        if not rows or self.calls + len(rows) + self.W > self._main_budget():
            return rows
        if self.starts:
            picks = torch.randint(len(self.starts), (len(rows),), generator=self.rng).tolist()
            x = torch.tensor(np.stack([self.starts[i].positions for i in picks]))
        elif self.restart_from == "sphere":
            x = torch.stack([self._fresh_cluster() for _ in rows])
        else:
            x = torch.as_tensor(self.atoms.positions)[None].expand(len(rows), -1, -1)
            x = x + self.start_rattle * torch.randn(x.shape, generator=self.rng, dtype=torch.float64)
        f, g = self._safe(self.evaluate(x))
        self.quench_calls += len(rows)
        ok = torch.isfinite(f)
        started = [w for w, good in zip(rows, ok.tolist()) if good]
        if started:
            self._start_quenches(started, x[ok], f[ok], g[ok])
        for w in started:
            self.home_f[w] = math.inf
            self.home_index[w] = -1
            self.energy[w] = self.excursion_energy
            self.ediff[w] = self.accept_above
            self.known_exits[w] = []
            self.stale[w] = self.home_returns[w] = self.stalled[w] = 0
            self.own_lowest[w] = math.inf
            self.restarts += 1
        return [w for w, good in zip(rows, ok.tolist()) if not good]

    def _fresh_cluster(self) -> torch.Tensor:
        """(N, 3) positions uniform in the ball about the input's centroid that
        reaches its farthest atom, no pair closer than 0.8x the input's median
        nearest-neighbour distance (the ball grows if needed to keep those hard
        spheres under 30% of its volume)."""
        x = torch.as_tensor(self.atoms.positions, dtype=torch.float64)
        n, centre = len(x), x.mean(0)
        radius = float((x - centre).norm(dim=1).max())
        distances = torch.cdist(x, x) + torch.diag(torch.full((n,), math.inf, dtype=x.dtype))
        closest = 0.8 * float(distances.min(1).values.median())
        radius = max(radius, closest / 2 * (n / 0.3) ** (1 / 3))
        points = torch.empty(0, 3, dtype=x.dtype)
        while len(points) < n:
            p = (2 * torch.rand(3, generator=self.rng, dtype=x.dtype) - 1) * radius
            if p.norm() <= radius and (len(points) == 0
                                       or float((points - p).norm(dim=1).min()) > closest):
                points = torch.cat([points, p[None]])
        return points + centre

    def _remember_exit(self, w: int, index: int):
        """Walker w's quench reached known minimum ``index``: unless that is
        home, keep the unit direction from home to the quench's end (rigid
        motions removed), the last ``kick_memory`` of them, for the next kicks
        to avoid (Cartesian space only)."""
        if not self.kick_memory or index == self.home_index[w] \
                or not isinstance(self.space, CartesianSpace):
            return
        home = self.home_x[w:w + 1]
        d = ecd.rigid_free(home, (self.quench.x[w] - self.home_x[w])[None])[0]
        norm = float(d.norm())
        if norm > 1e-6:
            self.known_exits[w] = (self.known_exits[w] + [d / norm])[-self.kick_memory:]

    def _hop(self, w: int, index: int):
        """Minima hopping's acceptance: walker w moves home to minimum ``index``
        when it lies less than its ediff above home; ediff shrinks on a move and
        grows on a refusal, by ``accept_rate``."""
        if index == self.home_index[w]:
            return
        energy, home = self.minima[index].energy, float(self.home_f[w])
        if energy < home + float(self.ediff[w]) or not math.isfinite(home):
            self._move_home(w, index)
            self.ediff[w] /= self.accept_rate
        else:
            self.ediff[w] *= self.accept_rate

    def _finish_revisit(self, w: int, index: int):
        """Walker w's quench was seen to be heading into known minimum ``index``."""
        self.minima[index].visits += 1
        self._count_home_return(w, index)
        self._remember_exit(w, index)
        self._adapt_energy(w, self.energy_growth)
        if self.home_policy == "hopping":
            self._hop(w, index)
        self._leave_exhausted_home(w)
        self.stale[w] += 1

    def _restless(self, w: int) -> bool:
        """Walker w's home has not moved in ``home_patience`` excursions
        (policy 'lower' only)."""
        return (self.home_policy == "lower" and self.home_patience > 0
                and self.stale[w] >= self.home_patience)

    def _shared_home(self, w: int) -> bool:
        """Another walker has walker w's home as its own."""
        return any(self.home_index[v] == self.home_index[w] for v in range(self.W) if v != w)

    def _leave_exhausted_home(self, w: int):
        if self.home_policy == "archive" and self._home_exhausted(w):
            self._move_home(w, self._draw_home())

    def _excursion_energy(self, w: int) -> float:
        """dE (eV) of walker w's next excursion: its home minimum's under
        'archive', else the walker's own."""
        h = self.home_index[w]
        if self.home_policy == "archive" and h >= 0:
            return self.minima[h].excursion_energy
        return float(self.energy[w])

    def _adapt_energy(self, w: int, factor: float):
        """Scale the dE of walker w's next excursion by ``factor``, within
        [dE0/4, 8 dE0]."""
        lo, hi = self.excursion_energy / 4, self.excursion_energy * 8
        h = self.home_index[w]
        if self.home_policy == "archive" and h >= 0:
            # k walkers sharing a home bring k outcomes a round: each counts 1/k
            factor **= 1 / self.home_index.count(h)
            home = self.minima[h]
            home.excursion_energy = min(hi, max(lo, home.excursion_energy * factor))
        else:
            self.energy[w] = min(hi, max(lo, float(self.energy[w]) * factor))

    def _home_exhausted(self, w: int) -> bool:
        """Excursions from the home kept landing in known minima, so that its
        excursion energy grew to ``leave_at`` x dE0."""
        h = self.home_index[w]
        limit = self.leave_at * self.excursion_energy * (1 - 1e-9)
        return h >= 0 and self.minima[h].excursion_energy >= limit

    def _draw_home(self) -> int:
        """A known minimum drawn with weight exp(-(E - E_lowest)/home_temperature)
        x (dE0/dE)^2: low minima whose surroundings excursions have explored
        least (their dE has not grown) first."""
        energy = torch.tensor([m.energy for m in self.minima], dtype=torch.float64)
        grown = torch.tensor([m.excursion_energy for m in self.minima],
                             dtype=torch.float64) / self.excursion_energy
        weight = torch.exp(-(energy - energy.min()) / self.home_temperature) / grown ** 2
        return int(torch.multinomial(weight, 1, generator=self.rng))

    def _move_home(self, w: int, index: int):
        m = self.minima[index]
        self.home_x[w] = torch.as_tensor(m.positions)
        self.home_f[w] = m.energy
        self.home_g[w] = torch.as_tensor(m.gradient)
        if m.curvature is not None:
            self.home_s[w], self.home_y[w] = m.curvature
        else:                              # not kept (resumed run): the kick is isotropic
            self.home_s[w], self.home_y[w] = 0.0, 0.0
        self.home_index[w] = index
        self.known_exits[w] = []
        self.stale[w] = 0

    # -- main loop ------------------------------------------------------------------------------------
    def _done(self) -> bool:
        return self.target_energy is not None and self.lowest <= self.target_energy

    def run(self) -> SearchResult:
        t0 = time.perf_counter()
        if self.checkpoint and os.path.exists(self.checkpoint):
            self._load(self.checkpoint)
        else:
            self._fresh()
        try:
            self._explore()
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: keep what was found (checkpoint), let the caller
            # write current_result(), then stop
            if self.checkpoint:
                self._save(self.checkpoint)
            raise
        result = self._finalize(time.perf_counter() - t0)
        if self.checkpoint:
            self._save(self.checkpoint)
        return result

    def current_result(self) -> SearchResult:
        """The minima found so far, ranked, without refinement (after an interruption)."""
        return self._finalize(0.0, refine=False)

    def _main_budget(self) -> int:
        """Force calls for the walkers; the rest is kept for the final refinement."""
        return self.max_force_calls - int(self.refine_reserve * self.max_force_calls)

    def _explore(self):
        main_budget = self._main_budget()
        def harvest_step(length):
            return max(1, min(length, round(self.harvest_after * length)))
        burn = harvest_step(self.excursion_steps)
        torsion_length = self.torsion_push_steps if self.bond_space is not None else 0
        torsion_burn = harvest_step(torsion_length) if torsion_length else 0
        while self.calls + self.W <= main_budget and not self._done():
            proposed = ecd.propose(self.walkers, self.hp, self._bounce_directions)
            stepped = ecd.quench_propose(self.quench, self.qp, ~self.exploring)
            moved = self.space.move(self.cart, proposed.x - self.walkers.x)
            in_torsion = self.exploring & self.in_torsion
            if self.bond_space is not None:
                turned = ecd.propose(self.torsion_walkers, self.torsion_hp, ecd.isotropic)
                moved = torch.where(in_torsion[:, None, None], self.bond_space.move(
                    self.cart, turned.x - self.torsion_walkers.x), moved)
            x = torch.where(self.exploring[:, None, None], moved, stepped.x)
            f, g = self._safe(self.evaluate(x))
            n_explore = int(self.exploring.sum())
            self.ecd_calls += n_explore
            self.quench_calls += self.W - n_explore
            failed = torch.isinf(f)
            walked = ecd.absorb(proposed, f, self.space.gradient(x, g), self.hp)
            quenched = ecd.quench_absorb(stepped.replace(x=x), f, g)
            if self.bond_space is not None:
                turned = ecd.absorb(turned, f, self.bond_space.gradient(x, g), self.torsion_hp)
            improved = self.exploring & (f < self._excursion_field("best_f"))
            self.best_cart = torch.where(improved[:, None, None], x, self.best_cart)
            self.best_cart_g = torch.where(improved[:, None, None], g, self.best_cart_g)
            # the excursion's previous point, a dip if lower than the points on either side
            last_f, last_cart, last_cart_g = self._excursion_field("f"), self.cart, self.cart_g
            self.cart = torch.where(self.exploring[:, None, None], x, self.cart)
            self.cart_g = torch.where(self.exploring[:, None, None], g, self.cart_g)
            self.walkers = ecd.where(self.exploring & ~in_torsion, walked, self.walkers)
            if self.bond_space is not None:
                self.torsion_walkers = ecd.where(in_torsion, turned, self.torsion_walkers)
            self.quench = ecd.where(~self.exploring, quenched, self.quench)
            self.iteration += 1
            self._record_trace()
            for function, interval in self.observers:
                if self.iteration % interval == 0:
                    function(self)

            # a failed evaluation sends the walker back home to start over
            failed_rows = torch.nonzero(failed).flatten().tolist()
            steps = self._excursion_field("steps")
            length = torch.where(in_torsion, torsion_length, self.excursion_steps)
            # from the harvest point on, the lowest point is looked for afresh
            restart = self.exploring & (steps == torch.where(in_torsion, torsion_burn, burn))
            b = self.walkers
            self.walkers = ecd.where(restart & ~in_torsion,
                                     b.replace(best_x=b.x, best_f=b.f, best_g=b.g), b)
            if self.bond_space is not None:
                b = self.torsion_walkers
                self.torsion_walkers = ecd.where(restart & in_torsion,
                                                 b.replace(best_x=b.x, best_f=b.f, best_g=b.g), b)
            self.best_cart = torch.where(restart[:, None, None], self.cart, self.best_cart)
            self.best_cart_g = torch.where(restart[:, None, None], self.cart_g, self.best_cart_g)
            dip = self.exploring & ~failed & (last_f < self.before_last_f) & (last_f < f)
            self.dips += dip.long()
            stopped = dip & (self.dips == self.excursion_minima) & (self.excursion_minima > 0)
            at_dip = stopped[:, None, None]
            harvest_x = torch.where(at_dip, last_cart, self.best_cart)
            harvest_g = torch.where(at_dip, last_cart_g, self.best_cart_g)
            harvest_f = torch.where(stopped, last_f, self._excursion_field("best_f"))
            if self.hinges is not None and self.inversion_stop > 0:
                # a ring that has flipped is in the other pucker's basin: quench it now
                flipped = self.exploring & ~failed & ~stopped & self.hinges.inverted(
                    x, self.home_x, math.radians(self.inversion_stop))
                harvest_x = torch.where(flipped[:, None, None], x, harvest_x)
                harvest_g = torch.where(flipped[:, None, None], g, harvest_g)
                harvest_f = torch.where(flipped, f, harvest_f)
                stopped = stopped | flipped
            if self.hinges is not None and self.futility_stop > 0:
                # an excursion that has started no change of conformer by now rarely makes one later
                self.stirred |= self.exploring & self.hinges.stirred(x, self.home_x, CHAIN_TURN)
                stopped = stopped | (self.exploring & ~failed & (steps == self.futility_stop)
                                     & ~self.stirred)
            self.before_last_f = torch.where(self.exploring, last_f, self.before_last_f)
            ended = torch.nonzero(self.exploring & ~failed
                                  & ((steps >= length) | stopped)).flatten().tolist()
            # tight only where the quench may end at or below the lowest minimum
            near_lowest = self.quench.f < self.lowest + self.archive_gate
            fmax = torch.where(near_lowest, torch.tensor(self.quench_fmax, dtype=torch.float64),
                               torch.tensor(self.screen_fmax, dtype=torch.float64))
            largest = ecd.max_force(self.quench.g)
            quenching = ~self.exploring & ~failed
            finished = quenching & ((largest < fmax) | (self.quench.steps >= self.quench_steps))
            revisits = {}
            if self.revisit_fmax > 0:
                close = quenching & ~finished & (largest < self.revisit_fmax)
                for w in torch.nonzero(close).flatten().tolist():
                    index = self._known_basin(w)
                    if index is not None:
                        revisits[w] = index
            if self.home_radius > 0:
                for w in torch.nonzero(quenching & ~finished).flatten().tolist():
                    if w not in revisits and self._back_home(w):
                        revisits[w] = self.home_index[w]
            settled = torch.nonzero(finished).flatten().tolist() + list(revisits)
            for w in settled:
                if w in revisits:
                    self._finish_revisit(w, revisits[w])
                else:
                    self._finish_quench(w)
            if ended:
                idx = torch.tensor(ended)
                self._start_quenches(ended, harvest_x[idx], harvest_f[idx], harvest_g[idx])
            for w in settled:
                self._count_stall(w)
            dead = [w for w in settled
                    if (self.restart_after and self.home_returns[w] >= self.restart_after)
                    or (self.restart_stalled and self.stalled[w] >= self.restart_stalled)]
            kept = self._restart(dead)
            self._start_excursions([w for w in settled + failed_rows
                                    if w not in dead or w in kept])
            if self.checkpoint and self.iteration % self.checkpoint_every == 0 \
                    and self._clock() >= self._next_save:
                self._periodic_save()

    def _excursion_field(self, name: str) -> torch.Tensor:
        """(W,) a per-walker field of the ECD state each walker's excursion
        runs in (``torsion_walkers`` for a ring molecule's torsion pushes)."""
        value = getattr(self.walkers, name)
        if self.bond_space is None:
            return value
        return torch.where(self.in_torsion, getattr(self.torsion_walkers, name), value)

    def _periodic_save(self):
        """Checkpoint, then wait 19x as long as the write took before the
        next one, so that writes take at most 5% of the wall time."""
        start = self._clock()
        self._save(self.checkpoint)
        end = self._clock()
        self._next_save = end + 19 * (end - start)

    TRACE_ROWS = 2000

    def _record_trace(self):
        """Walker energies every ``stride`` steps; past TRACE_ROWS rows every other
        row is dropped and the stride doubles, so memory and checkpoints stay small."""
        stride = self.trace_stride
        if self.iteration % stride:
            return
        current = torch.where(self.exploring, self._excursion_field("f"), self.quench.f)
        self.trace.append((self.calls, [round(e, 8) for e in current.tolist()]))
        if len(self.trace) > self.TRACE_ROWS:
            self.trace = self.trace[::2]
            self.trace_stride = 2 * stride

    # -- refinement and ranking -------------------------------------------------------------------------
    def _refine(self, chosen: list[Minimum]):
        """Batched L-BFGS of the chosen minima to refine_fmax, within the budget."""
        pending = [m for m in chosen if not m.refined]
        if not pending:
            return
        x = torch.tensor(np.stack([m.positions for m in pending]))
        f = torch.tensor([m.energy for m in pending], dtype=torch.float64)
        g = torch.tensor(np.stack([m.gradient for m in pending]))
        state = ecd.quench_init(x, f, g, self.qp)
        state, converged, used = ecd.quench_until(
            state, lambda xs: self._safe(self.evaluate(xs)), self.refine_fmax, self.quench_steps,
            self.qp, budget=self.max_force_calls - self.calls)
        self.refine_calls += int(used.sum())
        for k, m in enumerate(pending):
            if torch.isfinite(state.f[k]):
                m.positions, m.energy = state.x[k].numpy().copy(), float(state.f[k])
                m.refined = bool(converged[k])

    def _finalize(self, wall, refine=True) -> SearchResult:
        if not self.minima:
            # the budget ended before any quench did: keep the lowest point seen
            # (refinement below may still converge it; info["refined"] says)
            k = int(torch.argmin(self.quench.f))
            if not torch.isfinite(self.quench.f[k]):
                raise RuntimeError("no finite energy was obtained within the budget")
            self.minima.append(Minimum(self.quench.x[k].numpy().copy(), float(self.quench.f[k]),
                                       self.calls, gradient=self.quench.g[k].numpy().copy()))
        lowest = min(m.energy for m in self.minima)
        window = sorted((m for m in self.minima if m.energy <= lowest + self.energy_window),
                        key=lambda m: m.energy)
        if refine:
            self._refine(window)
        kept: list[Minimum] = []
        visits: dict[int, int] = {}       # id(kept minimum) -> landings in it and its merged records
        for m in sorted(window, key=lambda m: m.energy):
            if not self._keeps_topology(m.positions):
                continue
            same = next((k for k in kept if self._same(k, m, self.energy_tolerance)), None)
            if same is not None:
                # loose quenches can leave one conformer as several records until
                # refinement merges them: it was found when the first one was
                same.found_at = min(same.found_at, m.found_at)
            else:
                same = next((k for k in kept if self._top_rotamer(k, m)), None)
            if same is None:
                kept.append(m)
                visits[id(m)] = m.visits
            else:
                visits[id(same)] += m.visits
        if not kept:
            raise RuntimeError(
                f"no minimum with the input's bonds was found in {self.calls} force calls: "
                "the calculator breaks or forms bonds of this molecule, or the budget is too small")
        lowest = kept[0].energy
        kept = [m for m in kept if m.energy <= lowest + self.energy_window]
        weights = boltzmann_weights([m.energy for m in kept], self.temperature)
        conformers = []
        for rank, (m, w) in enumerate(zip(kept, weights), 1):
            atoms = self.atoms.copy()
            atoms.positions = m.positions
            atoms.info.update(energy=m.energy, rank=rank, boltzmann_weight=float(w),
                              relative_kcal_mol=(m.energy - lowest) / KCAL_PER_MOL,
                              found_at_force_call=m.found_at, visits=visits[id(m)],
                              refined=m.refined)
            conformers.append(atoms)
        return SearchResult(conformers=conformers, force_calls=self.calls,
                            ecd_calls=self.ecd_calls, quench_calls=self.quench_calls,
                            refine_calls=self.refine_calls, minima_found=len(self.minima),
                            wall_time_s=wall, history=list(self.history),
                            trace=list(self.trace), kind=self.kind, restarts=self.restarts)

    # -- checkpoint -----------------------------------------------------------------------------------------
    def _save(self, path):
        data = {
            "version": CHECKPOINT_VERSION, "symbols": self.atoms.get_chemical_symbols(),
            "walkers": self.W, "calls": self.calls, "iteration": self.iteration,
            "ecd_calls": self.ecd_calls, "quench_calls": self.quench_calls,
            "refine_calls": self.refine_calls, "history": self.history, "trace": self.trace,
            "trace_stride": self.trace_stride,
            "minima": [{"positions": m.positions.tolist(), "energy": m.energy,
                        "found_at": m.found_at, "visits": m.visits, "refined": m.refined,
                        "gradient": m.gradient.tolist(), "excursion_energy": m.excursion_energy}
                       for m in self.minima],
            "home_index": self.home_index,
            "ecd": self.walkers.to_dict(), "quench": self.quench.to_dict(),
            "exploring": self.exploring.tolist(), "home_x": self.home_x.tolist(),
            "home_f": self.home_f.tolist(), "home_g": self.home_g.tolist(),
            "energy": self.energy.tolist(), "ediff": self.ediff.tolist(),
            "home_s": self.home_s.tolist(), "home_y": self.home_y.tolist(),
            "known_exits": [[d.tolist() for d in exits] for exits in self.known_exits],
            "stale": self.stale, "home_returns": self.home_returns, "restarts": self.restarts,
            "own_lowest": self.own_lowest, "stalled": self.stalled,
            **{name: getattr(self, name).tolist()
               for name in ("cart", "cart_g", "best_cart", "best_cart_g",
                            "before_last_f", "dips", "stirred", "in_torsion")},
        }
        if self.bond_space is not None:
            data["torsion_ecd"] = self.torsion_walkers.to_dict()

        def write_to(tmp):
            with open(tmp, "w") as fh:
                json.dump(data, fh, allow_nan=True)
        atomic_write(path, write_to)

    def _load(self, path):
        with open(path) as fh:
            data = json.load(fh)
        if data.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint {path} has an unknown format version")
        if data["symbols"] != self.atoms.get_chemical_symbols() or data["walkers"] != self.W:
            raise ValueError(f"checkpoint {path} belongs to another molecule or walker count")
        self.evaluate.calls = data["calls"]
        self.iteration = data["iteration"]
        self.ecd_calls, self.quench_calls = data["ecd_calls"], data["quench_calls"]
        self.refine_calls = data["refine_calls"]
        self.history = [tuple(h) for h in data["history"]]
        self.trace = [tuple(t) for t in data.get("trace", [])]
        self.trace_stride = data.get("trace_stride", 1)
        self.minima = [Minimum(np.array(m["positions"]), m["energy"], m["found_at"],
                               m["visits"], m["refined"], np.array(m["gradient"]),
                               m.get("excursion_energy", self.excursion_energy))
                       for m in data["minima"]]
        self.home_index = data.get("home_index", [-1] * self.W)
        # checkpoints before session 19 lack the remembered exits
        self.known_exits = [[torch.tensor(d, dtype=torch.float64) for d in exits]
                            for exits in data.get("known_exits", [[]] * self.W)]
        self.stale = list(data.get("stale", [0] * self.W))
        self.home_returns = list(data.get("home_returns", [0] * self.W))
        self.own_lowest = list(data.get("own_lowest", [math.inf] * self.W))
        self.stalled = list(data.get("stalled", [0] * self.W))
        self.restarts = data.get("restarts", 0)
        self.walkers = ecd.ECDState.from_dict(data["ecd"])
        self.rng = self.walkers.rng
        self.quench = ecd.QuenchState.from_dict(data["quench"])
        self.exploring = torch.tensor(data["exploring"], dtype=torch.bool)
        self.home_x = torch.tensor(data["home_x"], dtype=torch.float64)
        self.home_f = torch.tensor(data["home_f"], dtype=torch.float64)
        self.home_g = torch.tensor(data["home_g"], dtype=torch.float64)
        self.energy = torch.tensor(data["energy"], dtype=torch.float64)
        # checkpoints before session 18 lack ediff
        self.ediff = torch.tensor(data.get("ediff", [self.accept_above] * self.W), dtype=torch.float64)
        zeros = torch.zeros_like(self.quench.s)
        self.home_s = torch.tensor(data["home_s"], dtype=torch.float64) if "home_s" in data else zeros
        self.home_y = torch.tensor(data["home_y"], dtype=torch.float64) if "home_y" in data else zeros.clone()
        for name in ("cart", "cart_g", "best_cart", "best_cart_g"):
            setattr(self, name, torch.tensor(data[name], dtype=torch.float64))
        self._fresh_path()                 # checkpoints before session 16 lack the path
        if "dips" in data:
            self.before_last_f = torch.tensor(data["before_last_f"], dtype=torch.float64)
            self.dips = torch.tensor(data["dips"], dtype=torch.long)
        if "stirred" in data:
            self.stirred = torch.tensor(data["stirred"], dtype=torch.bool)
        self.in_torsion = torch.tensor(data.get("in_torsion", [False] * self.W), dtype=torch.bool)
        if self.bond_space is not None:
            if "torsion_ecd" in data:
                self.torsion_walkers = ecd.ECDState.from_dict(data["torsion_ecd"]).replace(rng=self.rng)
            else:                # written before session 43: no walker was in torsion space
                self.torsion_walkers = ecd.init(
                    self.bond_space.initial(self.home_x), self.home_f,
                    self.bond_space.gradient(self.home_x, self.home_g), self.torsion_hp, rng=self.rng)
        if self.walkers.x.shape[1:] != self.space.initial(self.home_x).shape[1:]:
            # written in another exploration space (a ring molecule before session
            # 40, or another ring_flips): the archive, homes and quenches carry
            # over; the walkers on an excursion start it afresh from home
            self.walkers = ecd.init(self.space.initial(self.home_x), self.home_f,
                                    self.space.gradient(self.home_x, self.home_g), self.hp,
                                    rng=self.rng)
            self._start_excursions(torch.nonzero(self.exploring).flatten().tolist())
