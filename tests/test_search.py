"""ConformerSearch: global minima, conformers, dedup, budget, checkpoints, faults."""
import itertools
import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.io import read
from scipy.spatial.transform import Rotation

from ecd_chem import ConformerSearch
from ecd_chem import dynamics as ecd
from ecd_chem.calculators import Evaluator
from ecd_chem.search import Minimum
from ecd_chem.potentials import LennardJonesModel, random_cluster
from ecd_chem.structures import (TorsionSpace, bond_graph, cluster_fingerprint,
                                 equivalence_classes, largest_displacement, rmsd)

from pathlib import Path

MOLECULES = Path(__file__).resolve().parent.parent / "molecules"
LJ13 = -44.326801


@pytest.mark.parametrize("kick", ["isotropic", "soft"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lj13_global_minimum(seed, kick):
    """Budget 10,000 force calls, 4 walkers: found for every seed tried here."""
    result = ConformerSearch(random_cluster(13, seed=seed), walkers=4, max_force_calls=10_000,
                             seed=seed, target_energy=LJ13 + 1e-3, kick=kick).run()
    assert result.best.info["energy"] == pytest.approx(LJ13, abs=1e-3)
    assert result.force_calls <= 10_000


def test_butane_anti_and_gauche_with_anti_lowest(ani):
    atoms = read(MOLECULES / "n-butane.xyz")
    result = ConformerSearch(atoms, ani, walkers=8, max_force_calls=1000, seed=0).run()
    dihedrals = [c.get_dihedral(0, 1, 2, 3) % 360 for c in result.conformers]
    anti = [abs(d - 180) < 20 for d in dihedrals]
    gauche = [min(abs(d - 60), abs(d - 300)) < 25 for d in dihedrals]
    assert anti[0], "the lowest conformer must be anti"
    assert any(gauche)
    energies = [c.info["energy"] for c in result.conformers]
    assert energies == sorted(energies)
    assert 0.3 < result.conformers[gauche.index(True)].info["relative_kcal_mol"] < 1.5


def test_ethanediol_hydrogen_bonded_gauche_is_lowest(ani):
    atoms = read(MOLECULES / "1,2-ethanediol.xyz")
    result = ConformerSearch(atoms, ani, walkers=8, max_force_calls=1500, seed=0).run()
    best = result.best
    occo = best.get_dihedral(0, 1, 2, 3) % 360
    assert min(abs(occo - 60), abs(occo - 300)) < 25
    symbols = best.get_chemical_symbols()
    d = best.get_all_distances()
    oxygens = [i for i, s in enumerate(symbols) if s == "O"]
    # an O-H hydrogen pointing at the other oxygen
    hbond = min(d[h, o] for h in range(len(best)) if symbols[h] == "H"
                for o in oxygens if d[h, [p for p in oxygens if p != o][0]] < 1.1)
    assert hbond < 2.5
    assert any(c.info["relative_kcal_mol"] > 1.0 for c in result.conformers)


# -- deduplication ---------------------------------------------------------------------------------

def test_rmsd_ignores_rotation_translation_and_equivalent_permutations():
    atoms = read(MOLECULES / "n-butane.xyz")
    classes = equivalence_classes(atoms.numbers, bond_graph(atoms))
    moved = atoms.positions @ Rotation.from_euler("xyz", [40, -70, 15], degrees=True).as_matrix().T
    moved = moved + np.array([3.0, -1.0, 7.0])
    hydrogens_of_c0 = [i for i in np.flatnonzero(bond_graph(atoms)[0]) if atoms.numbers[i] == 1]
    perm = np.arange(len(atoms))
    perm[hydrogens_of_c0] = np.roll(hydrogens_of_c0, 1)          # rotate the methyl's labels
    assert rmsd(atoms.positions, moved[perm], classes) < 1e-6
    assert rmsd(atoms.positions, moved[perm], None) > 0.3       # plain RMSD is fooled


def test_rmsd_that_stops_early_decides_the_same():
    """``below`` may stop the alignment search early, or skip it when the
    distances from the centre already rule a match out; the verdict "closer
    than below" must not change, for copies and for different conformers."""
    atoms = read(MOLECULES / "n-butane.xyz")
    classes = equivalence_classes(atoms.numbers, bond_graph(atoms))
    anti = atoms.positions
    bonds = bond_graph(atoms)
    side, grow = {2}, [2]                  # atoms on C2's side of the C1-C2 bond
    while grow:
        i = grow.pop()
        for j in np.flatnonzero(bonds[i]):
            if j != 1 and j not in side:
                side.add(j)
                grow.append(j)
    gauche = atoms.copy()
    gauche.set_dihedral(0, 1, 2, 3, 65, indices=sorted(side))
    rng = np.random.default_rng(0)
    for other in (anti[rng.permutation(len(anti))], anti + rng.normal(0, 0.05, anti.shape),
                  gauche.positions, gauche.positions + rng.normal(0, 0.05, anti.shape)):
        for threshold in (0.05, 0.125, 0.5, 2.0):
            full = rmsd(anti, other, classes)
            early = rmsd(anti, other, classes, below=threshold)
            assert (early < threshold) == (full < threshold)
            # an alignment found on the way, or a lower bound that is not below
            assert early >= full - 1e-12 or threshold <= early <= full + 1e-12


def test_distinct_conformers_stay_apart(ani):
    atoms = read(MOLECULES / "n-butane.xyz")
    result = ConformerSearch(atoms, ani, walkers=8, max_force_calls=1000, seed=0).run()
    classes = equivalence_classes(atoms.numbers, bond_graph(atoms))
    for i, a in enumerate(result.conformers):
        for b in result.conformers[i + 1:]:
            assert rmsd(a.positions, b.positions, classes) > 0.125


def test_equivalence_classes_find_methyl_hydrogens():
    ethanol = molecule("CH3CH2OH")
    classes = equivalence_classes(ethanol.numbers, bond_graph(ethanol))
    methyl = [i for i in np.flatnonzero(bond_graph(ethanol)[1]) if ethanol.numbers[i] == 1]
    assert len({classes[i] for i in methyl}) == 1
    assert len(set(classes)) < len(ethanol)


def test_torsion_space_marks_symmetric_tops():
    dipeptide = read(MOLECULES / "alanine_dipeptide.xyz")
    space = TorsionSpace(bond_graph(dipeptide), dipeptide.numbers)
    # two amide methyls and the side-chain methyl, not phi, psi or the amide bonds
    assert space.count == 7 and space.symmetric_top.sum() == 3
    for t in np.flatnonzero(space.symmetric_top):
        assert dipeptide.numbers[space.j[t]] == 6
    ethanol = molecule("CH3CH2OH")
    space = TorsionSpace(bond_graph(ethanol), ethanol.numbers)
    bonds = {tuple(sorted(ethanol.numbers[[i, j]])): bool(top)
             for i, j, top in zip(space.i, space.j, space.symmetric_top)}
    assert bonds == {(6, 6): True, (6, 8): False}      # the OH rotor is not a top
    methanol = molecule("CH3OH")                        # the top is on the larger side
    assert TorsionSpace(bond_graph(methanol), methanol.numbers).symmetric_top.tolist() == [True]


def test_ring_corners_flap_puckered_rings_only():
    from ecd_chem.structures import from_smiles, ring_corners

    def corners(smiles):
        m = from_smiles(smiles, 1)[0]
        return m, ring_corners(bond_graph(m), m.positions)
    m, found = corners("C1CCCCC1")
    assert len(found) == 6
    for a, b, side, ring in found:     # a CH2 corner: one carbon, two hydrogens
        assert sorted(m.numbers[side]) == [1, 1, 6]
        k = int(np.flatnonzero(side & (m.numbers == 6))[0])
        assert bond_graph(m)[k, [a, b]].all()
        # the ring in bonded order, a ... b, then the corner
        assert len(ring) == 6 and ring[0] == a and ring[-2] == b and ring[-1] == k
        assert all(bond_graph(m)[ring[i], ring[i - 1]] for i in range(6))
    assert corners("c1ccccc1C")[1] == []        # an aromatic ring has no pucker to change
    assert corners("CC1CC1")[1] == []           # nor a 3-ring
    assert len(corners("C1CC2CCCCC2CC1")[1]) == 8   # decalin: every corner but the fusion atoms
    m, found = corners("CC1CCCCC1")
    methyl_corner = [side for a, b, side, ring in found if side.sum() == 6]
    assert len(found) == 6 and len(methyl_corner) == 1   # the methyl goes with its ring carbon


def test_a_corner_flap_keeps_the_corners_bonds():
    from ecd_chem.structures import from_smiles
    m = from_smiles("CC1CCCCC1", 1)[0]
    space = TorsionSpace(bond_graph(m), m.numbers, m.positions)
    assert space.corner.sum() == 6 and space.symmetric_top.tolist() == [True] + [False] * 6
    x = torch.tensor(m.positions)[None]
    turn = torch.zeros(1, space.count, 1, dtype=torch.float64)
    t = int(np.flatnonzero(space.corner)[0])
    turn[0, t] = 0.8
    moved = space.move(x, turn)[0].numpy()
    d0, d1 = m.get_all_distances(), np.linalg.norm(moved[:, None] - moved[None], axis=-1)
    bonded = bond_graph(m)
    assert np.allclose(d0[bonded], d1[bonded])                 # every bond keeps its length
    assert not np.allclose(moved, m.positions)
    # tangents: the motion per radian, finite differences
    small = turn * 1e-5 / 0.8
    numeric = (space.move(x, small) - x) / 1e-5
    assert torch.allclose(space.tangents(x)[:, t], numeric, atol=1e-4)


def test_pucker_signs_flap_corners_away_from_the_ring_plane():
    from ecd_chem.structures import from_smiles
    m = from_smiles("CC1CCCCC1", 1)[0]
    space = TorsionSpace(bond_graph(m), m.numbers, m.positions)
    x = torch.tensor(m.positions)[None]
    signs = space.pucker_signs(x)
    assert signs.shape == (1, space.count)
    assert (signs[0, ~torch.tensor(space.corner)] == 0).all()       # the methyl torsion
    assert (signs[0, torch.tensor(space.corner)].abs() == 1).all()

    def height(cart, ring):            # the corner atom's distance from the ring's mean plane
        centred = cart[ring] - cart[ring].mean(0)
        return abs(float(centred[-1] @ np.linalg.svd(centred)[2][-1]))
    for t in np.flatnonzero(space.corner):
        ring = space.rings[t - (space.count - len(space.rings))]
        for way, grows in ((1, True), (-1, False)):
            turn = torch.zeros(1, space.count, 1, dtype=torch.float64)
            turn[0, t] = 0.1 * way * signs[0, t]
            moved = space.move(x, turn)[0].numpy()
            assert (height(moved, ring) > height(m.positions, ring)) == grows


def test_ring_torsions_and_their_inversion():
    from ecd_chem.structures import from_smiles
    m = from_smiles("CC1CCCCC1", 1)[0]
    space = TorsionSpace(bond_graph(m), m.numbers, m.positions)
    assert space.ring_quads.shape == (6, 4) and (space.quad_ring == 0).all()  # one ring, six corners
    x = torch.tensor(m.positions)[None]
    torsions = space.ring_torsions(x)[0]
    expected = [m.get_dihedral(*quad) for quad in space.ring_quads]
    assert np.allclose(np.degrees(torsions.numpy()) % 360, np.array(expected) % 360)
    assert (torsions.abs() > np.radians(40)).all()                       # a chair
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0])      # every torsion changes sign: the other chair
    both = torch.cat([x, mirrored])
    assert space.inverted(both, x.expand(2, -1, -1), np.radians(15)).tolist() == [False, True]
    assert not space.inverted(mirrored, x, np.radians(80)).any()         # none that far from planar
    flattened = mirrored.clone()
    flattened[0, space.ring_quads[0]] = x[0, space.ring_quads[0]]       # one corner left as it was
    assert not space.inverted(flattened, x, np.radians(15)).any()


def test_stirred_sees_ring_sign_changes_and_chain_turns():
    from ecd_chem.structures import from_smiles
    m = from_smiles("CCCCC1CCCCC1", 1)[0]            # n-butylcyclohexane
    space = TorsionSpace(bond_graph(m), m.numbers, m.positions)
    # ring-C1, C1-C2, C2-C3 turn the chain; C3-C4 turns a methyl top and is left out
    assert space.chain_quads.shape == (3, 4)
    assert all(m.numbers[q].tolist() == [6, 6, 6, 6] for q in space.chain_quads)
    x = torch.tensor(m.positions)[None]
    least = np.radians(60)
    assert not space.stirred(x, x, least).any()
    bond = int(np.flatnonzero(~space.corner & ~space.symmetric_top)[0])
    for angle, turned in ((40, False), (70, True), (-70, True), (300, True)):
        dq = torch.zeros(1, space.count, 1, dtype=torch.float64)
        dq[0, bond] = np.radians(angle)
        assert space.stirred(space.move(x, dq), x, least).item() == turned
    top = int(np.flatnonzero(space.symmetric_top)[0])
    dq = torch.zeros(1, space.count, 1, dtype=torch.float64)
    dq[0, top] = np.radians(120)
    assert not space.stirred(space.move(x, dq), x, least).any()      # a methyl turn changes nothing
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0])
    assert space.stirred(mirrored, x, least).all()                   # the ring's torsions changed sign
    ring_only = TorsionSpace(bond_graph(m), m.numbers, m.positions)
    ring_only.chain_quads = ring_only.chain_quads[:0]
    dq = torch.zeros(1, space.count, 1, dtype=torch.float64)
    dq[0, bond] = np.radians(90)
    assert not ring_only.stirred(space.move(x, dq), x, least).any()


def test_hinge_kicks_push_one_hinge():
    from ecd_chem.structures import from_smiles
    m = from_smiles("CC1CCCCC1", 1)[0]
    space = TorsionSpace(bond_graph(m), m.numbers, m.positions)
    x = torch.tensor(m.positions)[None].expand(16, -1, -1).clone()
    t = 3
    weights = torch.zeros(space.count)
    weights[t] = 1.0
    d = ecd.hinge_directions(space.tangents, weights)(x, torch.Generator().manual_seed(0))
    along = ecd.rigid_free(x, space.tangents(x)[:, t])
    cosine = (d * along).sum((1, 2)) / (d.flatten(1).norm(dim=1) * along.flatten(1).norm(dim=1))
    assert torch.allclose(cosine.abs(), torch.ones(16, dtype=torch.float64))
    assert (cosine > 0).any() and (cosine < 0).any()           # both ways
    signed = ecd.hinge_directions(space.tangents, weights, signs=space.pucker_signs)(
        x, torch.Generator().manual_seed(0))
    outward = ecd.rigid_free(x, space.tangents(x)[:, t] * space.pucker_signs(x)[:, t, None, None])
    assert torch.allclose(signed, outward / outward.flatten(1).norm(dim=1)[:, None, None]
                          * signed.flatten(1).norm(dim=1)[:, None, None])   # one way only
    with pytest.raises(ValueError):
        ecd.hinge_directions(space.tangents, torch.zeros(space.count))


def test_ring_molecules_explore_in_cartesians_along_hinges(ani):
    from ecd_chem.structures import CartesianSpace, from_smiles
    ring = ConformerSearch(read(MOLECULES / "methylcyclohexane_axial.xyz"), ani, walkers=2)
    assert isinstance(ring.space, CartesianSpace) and ring.hinges is not None
    assert ring.excursion_steps == 70 and ring.hp.bounce_every == 0 and ring.hp.dt == 0.2
    assert ring.hp.gap == 2.0 and ring.excursion_energy == 1.6
    assert ring._bounce_directions is ring.hinge_kick
    chain = ConformerSearch(read(MOLECULES / "n-hexane.xyz"), ani, walkers=2)
    assert isinstance(chain.space, TorsionSpace) and chain.hinges is None
    assert chain.hp.bounce_every == 10 and chain._bounce_directions is ecd.isotropic
    toluene = ConformerSearch(from_smiles("Cc1ccccc1", 1)[0], ani)
    assert toluene.hinges is None                  # a flat ring: nothing to flip


def test_axial_methylcyclohexane_flips_to_the_equatorial_chair(ani):
    """From the axial chair (ANI-1x), the equatorial chair 1.65 kcal/mol lower
    lies past a ring flip (~11 kcal/mol): no bond turns there, the ring's
    corners must flap through boat-like forms. Found at 259 calls with seed 0."""
    atoms = read(MOLECULES / "methylcyclohexane_axial.xyz")
    result = ConformerSearch(atoms, ani, walkers=1, max_force_calls=1500, seed=0).run()
    gaps = [c.info["relative_kcal_mol"] for c in result.conformers]
    assert len(gaps) >= 2 and gaps[1] == pytest.approx(1.65, abs=0.15)
    best = result.best
    ring = [1, 2, 3, 4, 5, 6]
    # equatorial: the methyl carbon lies near the ring's mean plane, far from it when axial
    centred = best.positions[ring] - best.positions[ring].mean(0)
    normal = np.linalg.svd(centred)[2][-1]
    height = abs((best.positions[0] - best.positions[ring].mean(0)) @ normal)
    assert height < 1.0


def test_ring_excursions_end_where_the_ring_has_inverted(ani):
    """An excursion ends at the first step where a ring has inverted its
    pucker from home, and its quench starts from that point; with
    ``inversion_stop=0`` (and ``futility_stop=0``) every excursion runs its
    70 steps."""
    atoms = read(MOLECULES / "methylcyclohexane_axial.xyz")

    def excursions(**kwargs):
        """Per excursion: whether the ring was inverted at each of its steps,
        and whether the point its quench started from was."""
        # Cartesian excursions only: a push on the methyl top would run in torsion space
        search = ConformerSearch(atoms, ani, walkers=2, max_force_calls=600, seed=0,
                                 torsion_pushes=False, **kwargs)
        least = np.radians(15.0)
        paths, ended = {}, []

        def follow(s):
            inverted = s.hinges.inverted(s.cart, s.home_x, least)
            for w in torch.nonzero(s.exploring).flatten().tolist():
                if int(s.walkers.steps[w]) == 1:
                    paths[w] = []
                paths[w].append(bool(inverted[w]))
        search.attach(follow)
        start = search._start_quenches

        def spy(rows, x, f, g):
            for i, w in enumerate(rows):
                if paths.get(w):
                    harvest = search.hinges.inverted(x[i:i + 1], search.home_x[w:w + 1], least)
                    ended.append((paths.pop(w), bool(harvest)))
            start(rows, x, f, g)
        search._start_quenches = spy
        search.run()
        return ended

    stopped = excursions()
    assert stopped and all(True not in path[:-1] for path, _ in stopped)   # none goes on past it
    flips = [(path, harvest) for path, harvest in stopped if path[-1]]
    assert flips and all(harvest and len(path) <= 70 for path, harvest in flips)
    assert any(len(path) < 70 for path, _ in flips)
    full = excursions(inversion_stop=0, futility_stop=0)
    assert full and all(len(path) == 70 for path, _ in full)
    assert any(True in path for path, _ in full)      # without the stop they flip and go on
    with pytest.raises(ValueError, match="inversion_stop"):
        ConformerSearch(atoms, ani, inversion_stop=90)


def test_ring_excursions_that_change_nothing_end_early(ani):
    """An excursion in which no ring torsion has changed sign and no chain
    torsion has turned by ``futility_stop`` steps ends there; one that has
    goes on. With ``futility_stop=0`` idle excursions run their 70 steps."""
    atoms = read(MOLECULES / "methylcyclohexane_axial.xyz")
    stop = 25

    def excursions(**kwargs):
        """Per excursion: its length and whether it had stirred by step ``stop``."""
        search = ConformerSearch(atoms, ani, walkers=2, max_force_calls=600, seed=0,
                                 inversion_stop=0, torsion_pushes=False, **kwargs)
        steps, stirred, done = {}, {}, []

        def follow(s):
            moved = s.hinges.stirred(s.cart, s.home_x, np.radians(60))
            for w in torch.nonzero(s.exploring).flatten().tolist():
                n = int(s.walkers.steps[w])
                if n == 1:
                    stirred[w] = False
                steps[w] = n
                if n <= stop:
                    stirred[w] |= bool(moved[w])
        search.attach(follow)
        start = search._start_quenches

        def spy(rows, x, f, g):
            done.extend((steps.pop(w), stirred.pop(w)) for w in rows if w in steps)
            start(rows, x, f, g)
        search._start_quenches = spy
        search.run()
        return done

    cut = excursions(futility_stop=stop)
    assert cut and all(length == stop for length, moved in cut if not moved)
    assert all(length == 70 for length, moved in cut if moved)
    assert any(not moved for _, moved in cut) and any(moved for _, moved in cut)
    uncut = excursions(futility_stop=0)
    assert all(length == 70 for length, _ in uncut)
    assert any(not moved for _, moved in uncut)          # idle excursions that ran on
    with pytest.raises(ValueError, match="futility_stop"):
        ConformerSearch(atoms, ani, futility_stop=-1)


def test_ring_molecules_turn_their_chains_in_torsion_space(ani, tmp_path):
    """Under ring flips an excursion pushed along a rotatable bond runs in
    torsion space (bond lengths kept, at most 15 steps), one pushed along a
    corner flap in Cartesians; ``torsion_pushes=False`` runs all in
    Cartesians. A checkpoint keeps each walker's space and torsion state."""
    from ecd_chem.structures import from_smiles
    atoms = from_smiles("CCCCC1CCCCC1", 1)[0]                 # n-butylcyclohexane
    pairs = np.argwhere(np.triu(bond_graph(atoms)))

    def excursions(**kwargs):
        """Per excursion: whether it ran in torsion space, its length, and
        how far any bond length strayed from home's along it (A)."""
        search = ConformerSearch(atoms, ani, walkers=2, max_force_calls=500, seed=0, **kwargs)
        paths, done = {}, []

        def follow(s):
            steps = s._excursion_field("steps")
            lengths = (s.cart[:, pairs[:, 0]] - s.cart[:, pairs[:, 1]]).norm(dim=-1)
            home = (s.home_x[:, pairs[:, 0]] - s.home_x[:, pairs[:, 1]]).norm(dim=-1)
            stray = (lengths - home).abs().amax(1)
            for w in torch.nonzero(s.exploring).flatten().tolist():
                if int(steps[w]) == 1:
                    paths[w] = [bool(s.in_torsion[w]), 0, 0.0]
                paths[w][1] = int(steps[w])
                paths[w][2] = max(paths[w][2], float(stray[w]))
        search.attach(follow)
        start = search._start_quenches

        def spy(rows, x, f, g):
            done.extend(paths.pop(w) for w in rows if w in paths)
            start(rows, x, f, g)
        search._start_quenches = spy
        search.run()
        return search, done

    search, mixed = excursions()
    turned = [p for p in mixed if p[0]]
    flapped = [p for p in mixed if not p[0]]
    assert turned and flapped
    assert all(length <= 15 and stray < 1e-8 for _, length, stray in turned)
    assert all(stray > 1e-3 for _, _, stray in flapped)
    assert any(length > 15 for _, length, _ in flapped)
    _, cartesian = excursions(torsion_pushes=False)
    assert cartesian and not any(p[0] for p in cartesian)
    path = tmp_path / "search.json"
    search._save(path)
    again = ConformerSearch(atoms, ani, walkers=2, max_force_calls=500, seed=0)
    again._load(path)
    assert torch.equal(again.in_torsion, search.in_torsion)
    assert torch.equal(again.torsion_walkers.x, search.torsion_walkers.x)
    assert torch.equal(again.torsion_walkers.p, search.torsion_walkers.p)


@pytest.mark.parametrize("kick, kick_torsions, nonzero",
                         [("soft", None, 1), ("soft", 2, 2), ("isotropic", None, 7)])
def test_torsion_kicks_go_on_kick_torsions(ani, kick, kick_torsions, nonzero):
    dipeptide = read(MOLECULES / "alanine_dipeptide.xyz")
    extra = {} if kick_torsions is None else {"kick_torsions": kick_torsions}
    search = ConformerSearch(dipeptide, ani, walkers=64, seed=0, kick=kick, **extra)
    q = torch.zeros(64, 7, 1, dtype=torch.float64)
    d = search._directions(list(range(64)))(q, torch.Generator().manual_seed(0)).flatten(1)
    assert ((d != 0).sum(1) == nonzero).all()
    tops = torch.tensor(search.space.symmetric_top)
    if kick == "soft":       # methyl rotors drawn with weight 0.3 against 1
        assert (d[:, tops] != 0).double().mean() < 0.5 * (d[:, ~tops] != 0).double().mean()


@pytest.mark.parametrize("policy", ["lower", "archive"])
def test_walker_homes_follow_the_policy(ani, policy):
    """'lower': a walker's home only ever moves down. 'archive': it moves up to
    another known minimum only once excursions from its home kept landing in
    known minima (the home's dE grew to leave_at x dE0)."""
    atoms = read(MOLECULES / "methoxyethanol.xyz")
    search = ConformerSearch(atoms, ani, walkers=1, max_force_calls=800, seed=0,
                             home_policy=policy)
    seen = []
    search.attach(lambda s: seen.append((s.home_index[0], float(s.home_f[0]),
                                         [m.excursion_energy for m in s.minima])))
    search.run()
    dE0 = search.excursion_energy
    rises = [(before, after) for before, after in zip(seen, seen[1:]) if after[1] > before[1] + 1e-9]
    if policy == "lower":
        assert not rises
        return
    assert rises, "the walker never left its first home"
    for (home, _, _), (_, _, energies) in rises:
        assert energies[home] >= search.leave_at * dE0 * (1 - 1e-9)
    for _, _, energies in seen:
        assert all(dE0 / 4 - 1e-12 <= e <= 8 * dE0 + 1e-12 for e in energies)


def test_checkpoint_keeps_each_minimum_s_excursion_energy_and_the_homes(ani, tmp_path):
    atoms = read(MOLECULES / "methoxyethanol.xyz")
    kwargs = dict(walkers=1, max_force_calls=400, seed=0, home_policy="archive",
                  checkpoint=str(tmp_path / "search.json"))
    first = ConformerSearch(atoms, ani, **kwargs)
    first.run()
    assert len({m.excursion_energy for m in first.minima}) > 1     # dE was adapted per minimum
    again = ConformerSearch(atoms, ani, **kwargs)
    again.run()                                                   # resumes at the spent budget
    assert again.home_index == first.home_index
    assert [m.excursion_energy for m in again.minima] == [m.excursion_energy for m in first.minima]


def test_auto_home_policy_follows_the_kind_and_the_walker_count(ani):
    atoms = read(MOLECULES / "methoxyethanol.xyz")
    assert ConformerSearch(atoms, ani, walkers=1).home_policy == "archive"
    assert ConformerSearch(atoms, ani, walkers=4).home_policy == "lower"
    assert ConformerSearch(random_cluster(13, seed=0), walkers=1).home_policy == "hopping"
    assert ConformerSearch(random_cluster(13, seed=0), walkers=4).home_policy == "hopping"


def test_hopping_accepts_a_minimum_less_than_ediff_above_home():
    """Minima hopping's rule: a landing less than ediff above home becomes the
    home and ediff shrinks by accept_rate; one higher up is refused and ediff grows."""
    atoms = random_cluster(7, seed=0)
    search = ConformerSearch(atoms, walkers=1, seed=0, home_policy="hopping",
                             accept_above=1.0, accept_rate=2.0)
    search._fresh()
    zeros = np.zeros((len(atoms), 3))
    search.minima = [Minimum(zeros, -10.0, 0, gradient=zeros), Minimum(zeros + 1, -9.5, 0, gradient=zeros),
                     Minimum(zeros + 2, -8.0, 0, gradient=zeros)]
    search._move_home(0, 0)
    search._hop(0, 2)                       # 2.0 above, ediff 1.0: refused
    assert search.home_index == [0] and float(search.ediff[0]) == pytest.approx(2.0)
    search._hop(0, 1)                       # 0.5 above, ediff 2.0: accepted
    assert search.home_index == [1] and float(search.home_f[0]) == pytest.approx(-9.5)
    assert float(search.ediff[0]) == pytest.approx(1.0)
    search._hop(0, 1)                       # its own home: nothing changes
    assert float(search.ediff[0]) == pytest.approx(1.0)


@pytest.mark.parametrize("walkers", [1, 3])
def test_hopping_walker_climbs_only_within_ediff_and_resumes_it(tmp_path, walkers):
    """Each walker hops on its own: a home rises only by less than that
    walker's ediff, and the walkers' ediffs go their own ways."""
    atoms = random_cluster(13, seed=1)
    kwargs = dict(walkers=walkers, max_force_calls=1500 * walkers, seed=1,
                  checkpoint=str(tmp_path / "search.json"))
    search = ConformerSearch(atoms, LennardJonesModel(), **kwargs)
    assert search.home_policy == "hopping"                       # the clusters' default
    seen = []
    search.attach(lambda s: seen.append((s.home_f.tolist(), s.ediff.tolist())))
    search.run()
    rises = [(a[0][w], a[1][w], b[0][w]) for a, b in zip(seen, seen[1:])
             for w in range(walkers) if b[0][w] > a[0][w] + 1e-9]
    assert rises, "no walker ever moved uphill"
    for home, ediff, new_home in rises:
        assert new_home - home < ediff
    if walkers > 1:
        assert any(len(set(ediffs)) > 1 for _, ediffs in seen), "the walkers' ediffs never differed"
    again = ConformerSearch(atoms, LennardJonesModel(), **kwargs)
    again.run()                                                   # resumes at the spent budget
    assert torch.equal(again.ediff, search.ediff) and again.home_index == search.home_index


def test_kicks_avoid_the_way_to_known_minima_from_the_same_home(tmp_path):
    """A quench that reaches a known minimum other than home leaves the unit
    direction home -> there (rigid motions removed); the last kick_memory of
    them are kept per walker, the next kicks from that home are orthogonal to
    them, and they are dropped when the home moves and resumed from a checkpoint."""
    atoms = random_cluster(13, seed=0)
    # the resume check needs exits remembered when the run ends; where a run
    # ends depends on its budget (and, bit for bit, on the thread count)
    for budget in (2500, 2300, 2100, 1900, 1700):
        kwargs = dict(walkers=2, max_force_calls=budget, seed=0, kick_memory=2,
                      home_policy="hopping", checkpoint=str(tmp_path / f"search{budget}.json"))
        search, seen, kicks = _search_watching_exits(atoms, kwargs)
        if any(search.known_exits):
            break
    assert max(len(e) for exits, _ in seen for e in exits) == 2
    assert kicks and max(kicks) < 1e-10
    cleared = 0
    for (exits, homes), (later, later_homes) in zip(seen, seen[1:]):
        for w in range(2):
            if later_homes[w] != homes[w]:
                assert later[w] == []
                cleared += bool(exits[w])
    assert cleared, "no home with remembered exits ever moved"
    assert any(search.known_exits)
    again = ConformerSearch(atoms, LennardJonesModel(), **kwargs)
    again.run()                                                   # resumes at the spent budget
    for mine, theirs in zip(search.known_exits, again.known_exits):
        assert len(mine) == len(theirs) and all(torch.equal(a, b) for a, b in zip(mine, theirs))
    off = ConformerSearch(atoms, LennardJonesModel(), walkers=2, max_force_calls=1000, seed=0,
                          kick_memory=0)
    off.run()
    assert off.known_exits == [[], []]


def _search_watching_exits(atoms, kwargs):
    """Run a search, recording each step's remembered exits and homes, and how
    far each kick from a home with exits leans along them."""
    search = ConformerSearch(atoms, LennardJonesModel(), **kwargs)
    seen, kicks = [], []

    def watch(s):
        seen.append(([list(e) for e in s.known_exits], list(s.home_index)))
        for w, exits in enumerate(s.known_exits):
            home = s.home_x[w:w + 1]
            for d in exits:
                assert float(d.norm()) == pytest.approx(1.0)
                assert torch.allclose(ecd.rigid_free(home, d[None])[0], d, atol=1e-10)
            if exits:
                kick = s._directions([w])(home, torch.Generator().manual_seed(0))[0]
                kicks.append(max(abs(float((kick * d).sum())) / float(kick.norm()) for d in exits))
    search.attach(watch)
    search.run()
    return search, seen, kicks


def test_a_walker_out_of_patience_takes_a_higher_new_minimum_as_home(tmp_path):
    """Under 'lower' a home only moves down, unless the walker has gone
    home_patience excursions without a move: then the next new minimum it lands
    in becomes home, higher or not, with dE back at dE0. The count is resumed
    from a checkpoint; with patience 0 a home never rises."""
    atoms = random_cluster(13, seed=2)

    def homes(patience, **extra):
        search = ConformerSearch(atoms, LennardJonesModel(), walkers=2, max_force_calls=3000,
                                 seed=2, home_policy="lower", home_patience=patience, **extra)
        seen = []
        search.attach(lambda s: seen.append((s.home_f.tolist(), list(s.stale), s.energy.tolist())))
        search.run()
        return search, seen

    _, never = homes(0)
    assert all(b[0][w] <= a[0][w] + 1e-9 for a, b in zip(never, never[1:]) for w in range(2))
    search, seen = homes(3, checkpoint=str(tmp_path / "search.json"))
    rises = [(a, b, w) for a, b in zip(seen, seen[1:]) for w in range(2) if b[0][w] > a[0][w] + 1e-9]
    assert rises, "no walker ever ran out of patience"
    for before, after, w in rises:
        assert before[1][w] >= 3 and after[1][w] == 0
        assert after[2][w] == pytest.approx(search.excursion_energy)
    assert max(stale for _, counts, _ in seen for stale in counts) <= 3 + 40   # a landing soon is new
    again = ConformerSearch(atoms, LennardJonesModel(), walkers=2, max_force_calls=3000, seed=2,
                            home_policy="lower", home_patience=3,
                            checkpoint=str(tmp_path / "search.json"))
    again.run()                                                   # resumes at the spent budget
    assert again.stale == search.stale


def test_a_walker_that_moves_into_another_walkers_home_has_no_patience_left():
    """Two walkers at one funnel bottom repeat each other's excursions: the one
    that arrives second is out of patience at once, and its next new landing
    becomes its home, higher or not."""
    search = ConformerSearch(random_cluster(13, seed=1), LennardJonesModel(), walkers=3,
                             max_force_calls=3000, seed=1, home_policy="lower", home_patience=40)
    seen = []
    search.attach(lambda s: seen.append((list(s.home_index), list(s.stale), s.home_f.tolist())))
    search.run()
    arrivals = [(i, w) for i, (a, b) in enumerate(zip(seen, seen[1:])) for w in range(3)
                if b[0][w] != a[0][w] and any(a[0][v] == b[0][w] for v in range(3) if v != w)]
    assert arrivals, "no walker ever moved into another walker's home"
    for i, w in arrivals:
        assert seen[i + 1][1][w] == 40
    first, w = arrivals[0]
    later = [b[2][w] > a[2][w] + 1e-9 for a, b in zip(seen[first + 1:], seen[first + 2:])]
    assert any(later), "the walker that arrived second never left the shared home"


@pytest.mark.parametrize("restart_after", [0, 5])
@pytest.mark.parametrize("policy, walkers", [("lower", 2), ("hopping", 1)])
def test_a_walker_whose_excursions_all_end_at_home_starts_over(restart_after, policy, walkers):
    """restart_after=k: a walker whose last k excursions all ended at its home
    quenches a fresh start and descends again from dE0 (under 'hopping' with
    ediff back at accept_above); the archive keeps everything. Off (0),
    walkers sit at home longer than that."""
    search = ConformerSearch(random_cluster(13, seed=1), LennardJonesModel(), walkers=walkers,
                             max_force_calls=3000, seed=1, home_policy=policy,
                             restart_after=restart_after)
    seen = []
    search.attach(lambda s: seen.append((list(s.home_returns), list(s.home_index),
                                         s.energy.tolist(), len(s.minima), s.ediff.tolist())))
    result = search.run()
    longest = max(max(returns) for returns, *_ in seen)
    if not restart_after:
        assert search.restarts == 0 and longest > 5
        return
    assert result.restarts == search.restarts > 0 and longest <= restart_after
    restarted = [(i, w) for i, (a, b) in enumerate(zip(seen, seen[1:])) for w in range(walkers)
                 if a[1][w] != -1 and b[1][w] == -1]
    assert restarted, "no walker was seen starting over"
    for i, w in restarted:
        assert seen[i][0][w] == restart_after - 1 and seen[i + 1][0][w] == 0
        assert seen[i + 1][2][w] == search.excursion_energy
        assert seen[i + 1][4][w] == search.accept_above
    assert all(a[3] <= b[3] for a, b in zip(seen, seen[1:]))
    assert result.force_calls <= 3000


@pytest.mark.parametrize("stall", [0, 6])
def test_a_walker_whose_own_lowest_home_stalls_starts_over(stall, tmp_path):
    """restart_stalled=k: a walker whose lowest home since its last start has
    not improved in k landings starts over (restart_after off here, so these
    are the only restarts); off, none does. A checkpoint keeps the counts."""
    kwargs = dict(walkers=2, max_force_calls=3000, seed=1, restart_after=0,
                  restart_stalled=stall, checkpoint=str(tmp_path / "search.json"))
    search = ConformerSearch(random_cluster(13, seed=1), LennardJonesModel(), **kwargs)
    seen = []
    search.attach(lambda s: seen.append((list(s.stalled), list(s.home_index), list(s.own_lowest))))
    result = search.run()
    if not stall:
        assert result.restarts == 0 and max(max(n) for n, *_ in seen) > 6
        return
    assert result.restarts > 0 and max(max(n) for n, *_ in seen) <= stall
    restarted = [(i, w) for i, (a, b) in enumerate(zip(seen, seen[1:])) for w in range(2)
                 if a[1][w] != -1 and b[1][w] == -1]
    assert restarted, "no walker was seen starting over"
    for i, w in restarted:
        assert seen[i][0][w] == stall - 1 and seen[i + 1][0][w] == 0
        assert seen[i + 1][2][w] == float("inf")
    assert result.force_calls <= 3000
    again = ConformerSearch(random_cluster(13, seed=1), LennardJonesModel(), **kwargs)
    again.run()                                                   # resumes at the spent budget
    assert (again.stalled, again.own_lowest) == (search.stalled, search.own_lowest)


@pytest.mark.parametrize("restart_from", ["start", "sphere"])
def test_restarted_walkers_start_from_the_input_or_a_fresh_random_cluster(restart_from):
    """restart_from='start': a restarted walker quenches the input rattled by
    start_rattle; 'sphere': a fresh random cluster in the ball the input fills,
    no pair much closer than the input's neighbours. Seen one quench step
    (at most max_step per atom) after the restart."""
    atoms = random_cluster(13, seed=1)
    search = ConformerSearch(atoms, LennardJonesModel(), walkers=2, max_force_calls=3000, seed=1,
                             restart_after=0, restart_stalled=6, restart_from=restart_from)
    seen = []
    search.attach(lambda s: seen.append((list(s.home_index), s.quench.x.clone())))
    search.run()
    starts = [b[1][w] for a, b in zip(seen, seen[1:]) for w in range(2)
              if a[0][w] != -1 and b[0][w] == -1]
    assert len(starts) >= 3
    x0 = torch.as_tensor(atoms.positions)
    shift = [float((x - x0).norm(dim=1).max()) for x in starts]
    if restart_from == "start":
        assert max(shift) < 0.1 * 5 + search.qp.max_step
        return
    assert min(shift) > 1.0
    ball = float((x0 - x0.mean(0)).norm(dim=1).max())
    for x in starts:
        assert float((x - x0.mean(0)).norm(dim=1).max()) < ball + search.qp.max_step + 0.2
        pairs = torch.pdist(x)
        assert float(pairs.min()) > 0.7 - 2 * search.qp.max_step


@pytest.mark.parametrize("walkers, policy, expected", [
    (4, "auto", (0, 0, 20)), (1, "auto", (0, 0, 20)), (4, "lower", (4, 40, 20)),
    (1, "lower", (4, 40, 20)), (1, "archive", (0, 0, 0))])
def test_kick_memory_patience_and_restarts_defaults_for_clusters(walkers, policy, expected):
    """kick_memory 4 and home_patience 40 for clusters under 'lower';
    restart_after 20 under 'lower' and 'hopping' (a lone hopping walker's
    home can be dead too); all 0 for molecules."""
    search = ConformerSearch(random_cluster(7, seed=0), walkers=walkers, home_policy=policy)
    assert (search.kick_memory, search.home_patience, search.restart_after) == expected
    molecule_search = ConformerSearch(molecule("CH3CH2OH"), EMT(), walkers=walkers,
                                      home_policy=policy)
    assert (molecule_search.kick_memory, molecule_search.home_patience,
            molecule_search.restart_after) == (0, 0, 0)


def test_archive_draws_low_and_little_explored_minima_first(ani):
    atoms = read(MOLECULES / "methoxyethanol.xyz")
    search = ConformerSearch(atoms, ani, walkers=1, seed=0, home_policy="archive",
                             home_temperature=0.02)
    dE0, zeros = search.excursion_energy, np.zeros((len(atoms), 3))
    search.minima = [Minimum(zeros, -1.00, 0, gradient=zeros, excursion_energy=8 * dE0),  # explored
                     Minimum(zeros, -1.00, 0, gradient=zeros, excursion_energy=dE0),      # fresh
                     Minimum(zeros, -0.90, 0, gradient=zeros, excursion_energy=dE0)]      # 0.1 eV up
    search.rng = torch.Generator().manual_seed(0)
    counts = np.bincount([search._draw_home() for _ in range(2000)], minlength=3)
    # weights 1/64 : 1 : exp(-5)
    assert counts[1] > 0.95 * 2000 and counts[0] > 0 and counts[0] > counts[2]


def test_a_conformer_kept_twice_is_reported_as_found_by_its_first_record():
    """Two loose records of one minimum merge in the final dedup; the survivor
    (the lower energy) keeps the force-call count of the earlier discovery."""
    atoms = random_cluster(13, seed=0)
    search = ConformerSearch(atoms, LennardJonesModel(), walkers=2, max_force_calls=400,
                             seed=0)
    search.run()
    lowest = min(search.minima, key=lambda m: m.energy)
    early = Minimum(lowest.positions + 1e-4, lowest.energy + 1e-3, found_at=5, refined=True,
                    gradient=lowest.gradient)
    late = Minimum(lowest.positions, lowest.energy - 1e-3, found_at=300, refined=True,
                   gradient=lowest.gradient)
    search.minima = [late, early]
    best = search.current_result().best
    assert best.info["energy"] == pytest.approx(late.energy)
    assert best.info["found_at_force_call"] == 5


def test_cluster_fingerprint_invariant():
    x = random_cluster(13, seed=0).positions
    rot = Rotation.from_euler("zyx", [10, 20, 30], degrees=True).as_matrix()
    y = (x @ rot.T + 5.0)[np.random.default_rng(0).permutation(13)]
    assert np.allclose(cluster_fingerprint(x), cluster_fingerprint(y))


def test_a_minimum_s_fingerprint_follows_its_positions():
    x = random_cluster(13, seed=0).positions
    m = Minimum(x, -40.0, 0)
    assert np.allclose(m.fingerprint(), cluster_fingerprint(x))
    m.positions = 1.1 * x               # a lower copy or the refinement replaces them
    assert np.allclose(m.fingerprint(), cluster_fingerprint(1.1 * x))


# -- budget, output ----------------------------------------------------------------------------------

class CountingLJ(LennardJonesModel):
    def __init__(self):
        super().__init__()
        self.geometries = 0

    def evaluate(self, atoms, positions):
        self.geometries += positions.shape[0]
        return super().evaluate(atoms, positions)


def test_quenches_screen_loosely_and_the_lowest_minimum_is_quenched_tight():
    search = ConformerSearch(random_cluster(13, seed=0), walkers=4, max_force_calls=3000, seed=0)
    search.run()
    largest_force = {id(m): np.linalg.norm(m.gradient, axis=1).max() for m in search.minima}
    best = min(search.minima, key=lambda m: m.energy)
    assert largest_force[id(best)] < search.quench_fmax == 0.01
    assert any(0.01 <= f < search.screen_fmax == 0.03 for f in largest_force.values())


def record_quench_starts(search) -> dict:
    """Walker -> (x, f, g) where its latest quench started, kept as the search runs."""
    starts, start_quenches = {}, search._start_quenches

    def record_start(rows, x, f, g):
        for k, w in enumerate(rows):
            starts[w] = (x[k].clone(), f[k].clone(), g[k].clone())
        return start_quenches(rows, x, f, g)

    search._start_quenches = record_start
    return starts


def test_a_quench_heading_into_a_known_minimum_stops_early_as_a_revisit():
    """Every quench the revisit check ended is redone from the same start to
    the screening threshold: the check must have saved calls on the same
    landings (not a comparison of two chaotic runs, which rounding moves).
    Homes only move down (no patience), so that the landings are the
    revisit-rich ones at a funnel bottom that this shortcut is for."""
    search = ConformerSearch(random_cluster(19, seed=0), walkers=4, max_force_calls=5000,
                             seed=0, home_patience=0, home_radius=0)
    assert search.revisit_fmax == 0.3
    starts, revisits = record_quench_starts(search), []
    finish_revisit = search._finish_revisit

    def record_revisit(w, index):
        revisits.append((starts[w], int(search.quench.steps[w])))
        return finish_revisit(w, index)

    search._finish_revisit = record_revisit
    search.run()
    # revisits end before converging; every minimum kept was quenched to screen_fmax
    assert all(np.linalg.norm(m.gradient, axis=1).max() < search.screen_fmax
               for m in search.minima)
    assert len(revisits) >= 20
    x, f, g = (torch.stack([start[i] for start, _ in revisits]) for i in range(3))
    evaluate = Evaluator(LennardJonesModel(), search.atoms)
    _, converged, full = ecd.quench_until(ecd.quench_init(x, f, g, search.qp), evaluate,
                                          search.screen_fmax, search.quench_steps, search.qp)
    assert bool(converged.all())
    stopped = torch.tensor([steps for _, steps in revisits], dtype=torch.float64)
    full = full.double()
    # the same L-BFGS path, cut where the check recognised the minimum
    # (measured: fewer steps on every landing, 0.84 of the full quench's overall)
    assert float((stopped < full).double().mean()) >= 0.9
    assert stopped.mean() < 0.9 * full.mean()
    with pytest.raises(ValueError, match="revisit_fmax"):
        ConformerSearch(random_cluster(13, seed=0), walkers=1, revisit_fmax=-1)


def test_a_quench_back_at_its_home_stops_there():
    """A cluster quench whose atoms are all back within home_radius of the
    home its excursion left from stops as a return home, at any force. Each
    such quench is redone from the same start to the screening threshold: it
    must end in that home (measured: all of them), and later."""
    search = ConformerSearch(random_cluster(19, seed=0), walkers=4, max_force_calls=5000,
                             seed=0, home_patience=0, revisit_fmax=0)   # the home check alone
    assert search.home_radius == search.rmsd_threshold
    starts, returns = record_quench_starts(search), []
    back_home = search._back_home

    def record_return(w):
        back = back_home(w)
        if back:
            returns.append((starts[w], int(search.quench.steps[w]), search.home_x[w].clone(),
                            float(ecd.max_force(search.quench.g[w:w + 1]))))
        return back

    search._back_home = record_return
    search.run()
    assert len(returns) >= 20
    # most are recognised while the forces are still too large for the fingerprint check
    assert sum(force > 0.3 for *_, force in returns) > len(returns) / 2
    x, f, g = (torch.stack([start[i] for start, *_ in returns]) for i in range(3))
    evaluate = Evaluator(LennardJonesModel(), search.atoms)
    end, converged, full = ecd.quench_until(ecd.quench_init(x, f, g, search.qp), evaluate,
                                            search.screen_fmax, search.quench_steps, search.qp)
    assert bool(converged.all())
    home = [largest_displacement(end.x[k].numpy(), r[2].numpy()) < search.rmsd_threshold
            for k, r in enumerate(returns)]
    assert np.mean(home) >= 0.95
    stopped = torch.tensor([steps for _, steps, *_ in returns], dtype=torch.float64)
    # as in the revisit test, a share rather than every one: a quench held to
    # quench_fmax near the lowest minimum can meet the check at its last step
    # (measured: every one earlier, 0.51 of the full quench's steps overall)
    assert float((stopped < full.double()).double().mean()) >= 0.9
    assert stopped.mean() < 0.8 * full.double().mean()
    with pytest.raises(ValueError, match="home_radius"):
        ConformerSearch(random_cluster(13, seed=0), walkers=1, home_radius=-1)


def test_preconditioned_cluster_quenches_cost_fewer_calls_per_landing():
    def calls_per_landing(precon):
        quench = landings = 0
        for seed in (0, 1):
            search = ConformerSearch(random_cluster(13, seed=seed), walkers=4,
                                     max_force_calls=3000, seed=seed, precon=precon)
            result = search.run()
            assert search.qp.precon is precon
            quench += result.quench_calls
            landings += sum(1 + m.visits for m in search.minima)
        return quench / landings

    assert calls_per_landing(True) < 0.85 * calls_per_landing(False)


class HarvestSpy(ConformerSearch):
    """Records each excursion's energies along its path and where its quench starts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.paths, self.harvests = {}, []
        self.attach(self._follow)

    @staticmethod
    def _follow(search):
        for w in torch.nonzero(search.exploring).flatten().tolist():
            if int(search.walkers.steps[w]) == 1:
                search.paths[w] = [float(search.home_f[w])]
            search.paths.setdefault(w, []).append(float(search.walkers.f[w]))

    def _start_quenches(self, rows, x, f, g):
        for i, w in enumerate(rows):
            if w in self.paths:
                self.harvests.append((self.paths.pop(w), float(f[i])))
        super()._start_quenches(rows, x, f, g)


def dips(path):
    """Interior local minima of an energy sequence."""
    return [i for i in range(1, len(path) - 1) if path[i - 1] > path[i] < path[i + 1]]


@pytest.mark.parametrize("minima", [1, 3])
def test_cluster_excursions_end_at_their_k_th_dip_and_quench_from_it(minima):
    """Minima hopping's rule: the k-th local minimum of the energy along the
    path ends the excursion and is where its quench starts."""
    search = HarvestSpy(random_cluster(13, seed=0), LennardJonesModel(), walkers=3,
                        max_force_calls=1500, seed=0, excursion_minima=minima)
    search.run()
    assert len(search.harvests) > 10
    burn = round(search.harvest_after * search.excursion_steps)
    for path, harvest in search.harvests:
        found = dips(path)
        if len(found) >= minima:                # stopped at the k-th dip, the step after it
            assert len(found) == minima and found[-1] == len(path) - 2
            assert harvest == path[-2]
        else:                                   # ran out of steps: its lowest point after the burn
            assert len(path) - 1 == search.excursion_steps
            assert harvest == min(path[burn:])
    ended_early = [len(p) - 1 < search.excursion_steps for p, _ in search.harvests]
    assert np.mean(ended_early) > 0.8


def test_without_the_dip_rule_excursions_run_their_steps_and_quench_from_their_low():
    search = HarvestSpy(random_cluster(13, seed=0), LennardJonesModel(), walkers=3,
                        max_force_calls=1500, seed=0, excursion_minima=0)
    search.run()
    assert search.harvests
    burn = round(search.harvest_after * search.excursion_steps)
    for path, harvest in search.harvests:
        assert len(path) - 1 == search.excursion_steps
        assert harvest == min(path[burn:])


@pytest.mark.parametrize("kind, walkers, precon, expected", [
    ("cluster", 1, None, True), ("cluster", 4, None, True), ("cluster", 4, False, False),
    ("molecule", 1, None, "bonded"), ("molecule", 4, None, "bonded"), ("molecule", 4, True, "bonded"),
    ("molecule", 1, "exp", True), ("molecule", 1, False, False)])
def test_default_preconditioner_follows_the_kind(kind, walkers, precon, expected):
    atoms = random_cluster(13, seed=0) if kind == "cluster" else molecule("CH3CH2OH")
    calc = LennardJonesModel() if kind == "cluster" else EMT()
    search = ConformerSearch(atoms, calc, walkers=walkers, kind=kind, precon=precon)
    if expected == "bonded":
        assert isinstance(search.qp.precon, ecd.BondedPreconditioner)
    else:
        assert search.qp.precon is expected


@pytest.mark.parametrize("kind, precon", [("cluster", "bonded"), ("molecule", "lindh")])
def test_unusable_preconditioner_is_rejected(kind, precon):
    atoms = random_cluster(13, seed=0) if kind == "cluster" else molecule("CH3CH2OH")
    with pytest.raises(ValueError, match="precon"):
        ConformerSearch(atoms, LennardJonesModel() if kind == "cluster" else EMT(), precon=precon)


@pytest.mark.parametrize("structure, energy, torsions, minima", [
    ("cluster", 5.0, None, 3), ("H2O", 0.3, None, 0), ("CH3CH2OH", 0.5, 1, 0)])
def test_default_excursion_follows_the_space(structure, energy, torsions, minima):
    """Cluster dE0 in LJ units, excursions ending at their third dip; molecules
    with rotatable bonds kick one torsion with 0.5 eV, rigid ones explore in
    Cartesians with 0.3 eV, both for their whole excursion."""
    atoms = random_cluster(13, seed=0) if structure == "cluster" else molecule(structure)
    calc = LennardJonesModel() if structure == "cluster" else EMT()
    search = ConformerSearch(atoms, calc, walkers=2)
    assert search.excursion_energy == energy
    assert search.excursion_minima == minima
    assert isinstance(search.space, TorsionSpace) == (torsions is not None)
    if torsions:
        q = torch.zeros(32, search.space.count, 1, dtype=torch.float64)
        d = search._directions(list(range(32)))(q, torch.Generator().manual_seed(0))
        assert ((d.flatten(1) != 0).sum(1) == torsions).all()


@pytest.mark.parametrize("structure, rattle", [("cluster", 0.1), ("CH3CH2OH", 0.0)])
def test_walkers_start_at_the_input_rattled_only_for_clusters(structure, rattle):
    """Walker 0 starts at the input; the others at the input rattled by 0.1
    (sigma) for clusters, unrattled for molecules, whose rattled starts only
    quenched back to the input's minimum."""
    atoms = random_cluster(13, seed=0) if structure == "cluster" else molecule(structure)
    calc = LennardJonesModel() if structure == "cluster" else EMT()
    search = ConformerSearch(atoms, calc, walkers=3, seed=1)
    assert search.start_rattle == rattle
    x = search._start_positions().numpy()
    assert np.array_equal(x[0], atoms.positions)
    spread = np.abs(x[1:] - atoms.positions).max()
    assert (spread == 0) if rattle == 0 else (0.1 < spread < 1.0)
    assert ConformerSearch(atoms, calc, walkers=3, start_rattle=0.05).start_rattle == 0.05


def test_walkers_sharing_one_start_quench_it_once(ani):
    """W walkers that all start at one geometry (a molecule searched from
    its input) quench it once, then each takes the same first step from its
    minimum: the first excursion starts 2W - 1 calls later than a lone
    walker's, where W separate quenches would have cost W times as much."""
    atoms = molecule("CH3CH2OH")                    # ASE's geometry, not ANI-1x's minimum
    first, starts = {}, {}
    for walkers in (1, 4):
        search = ConformerSearch(atoms, ani, walkers=walkers, max_force_calls=300, seed=0)

        def watch(s, walkers=walkers):
            if walkers not in starts:
                starts[walkers] = s.quench.x.clone()
            if s.exploring.any() and walkers not in first:
                first[walkers] = s.calls
        search.attach(watch)
        search.run()
    lone_quench = first[1] - 2            # its evaluation at the start and its first excursion step
    assert lone_quench >= 2               # the input is not a minimum: the quench took steps
    assert first[4] == first[1] + 2 * 4 - 1
    assert first[4] < 4 * first[1]
    # all four took their first step from the one minimum (batched float32 rows may differ in
    # the last digits)
    assert torch.allclose(starts[4], starts[4][:1].expand(4, -1, -1), atol=1e-5)


def test_molecule_revisits_stop_early_and_lose_no_conformer(ani):
    """Butane with one walker and revisits on (off by default for molecules):
    they end early (fewer quench calls per landing), and the anti and both
    gauche conformers are still found."""
    atoms = read(MOLECULES / "n-butane.xyz")

    def run(revisit_fmax):
        search = ConformerSearch(atoms, ani, walkers=1, max_force_calls=400, seed=0,
                                 revisit_fmax=revisit_fmax, revisit_rmsd=0.25)
        result = search.run()
        landings = sum(m.visits for m in search.minima)
        kinds = sorted({round((c.get_dihedral(0, 1, 2, 3) % 360) / 60) % 6 for c in result.conformers})
        return search, result.quench_calls / landings, kinds

    assert ConformerSearch(atoms, ani, walkers=1).revisit_fmax == 0.0
    screened, per_landing, kinds = run(0.3)
    _, per_full_quench, kinds_full = run(0.0)
    assert per_landing < 0.9 * per_full_quench
    assert kinds == kinds_full == [1, 3, 5]          # gauche+, anti, gauche-
    with pytest.raises(ValueError, match="revisit_rmsd"):
        ConformerSearch(atoms, ani, walkers=1, revisit_rmsd=0)


@pytest.mark.parametrize("budget", [16, 101, 777])
def test_force_call_budget_is_never_exceeded(budget):
    model = CountingLJ()
    result = ConformerSearch(random_cluster(13, seed=3), model, walkers=8,
                             max_force_calls=budget, seed=0).run()
    assert model.geometries == result.force_calls <= budget
    assert result.force_calls == result.ecd_calls + result.quench_calls + result.refine_calls


def test_write_xyz_sorted_with_energies(tmp_path, ani):
    atoms = read(MOLECULES / "n-butane.xyz")
    result = ConformerSearch(atoms, ani, walkers=4, max_force_calls=600, seed=1).run()
    path = tmp_path / "conformers.xyz"
    result.write(path)
    frames = read(path, ":")
    assert len(frames) == len(result.conformers)
    comments = path.read_text().splitlines()[1]
    assert comments.startswith("rank=1 energy_eV=") and "relative_kcal_mol=0.0000" in comments
    weights = [c.info["boltzmann_weight"] for c in result.conformers]
    assert abs(sum(weights) - 1) < 1e-9 and weights[0] == max(weights)
    result.write(tmp_path / "conformers.traj")
    assert len(read(tmp_path / "conformers.traj", ":")) == len(frames)


def test_each_conformer_reports_how_often_it_was_landed_in():
    """visits: landings in the conformer and in every record merged into it,
    so they add up to the landings in the archive's minima within the window."""
    search = ConformerSearch(random_cluster(7, seed=0), LennardJonesModel(), walkers=2,
                             max_force_calls=2000, seed=0, energy_window=100)
    result = search.run()
    visits = [c.info["visits"] for c in result.conformers]
    assert len(visits) >= 2 and min(visits) >= 1 and max(visits) >= 2
    window = [m for m in search.minima if m.energy <= search.lowest + search.energy_window]
    assert sum(visits) == sum(m.visits for m in window)
    assert [c["visits"] for c in result.to_dict()["conformers"]] == visits
    table = result.table(rows=1).splitlines()
    assert len(table) == 3 and table[1].split()[3] == str(visits[0])
    assert table[2] == f"... and {len(visits) - 1} more"
    # a duplicate test loose enough to merge every record into the lowest: its visits add up
    search.energy_tolerance, search.rmsd_threshold = 10.0, 10.0
    (merged,) = search.current_result().conformers
    assert merged.info["visits"] == sum(visits)


def test_boltzmann_weights_at_room_temperature_and_at_zero():
    from ase.units import kB
    from ecd_chem.structures import boltzmann_weights
    w = boltzmann_weights([0.0, 0.01, 0.0], 298.15)
    assert abs(w.sum() - 1) < 1e-12 and w[0] == w[2]
    assert w[1] / w[0] == pytest.approx(np.exp(-0.01 / (kB * 298.15)))
    assert boltzmann_weights([0.0, 0.01, 0.0], 0).tolist() == [0.5, 0.0, 0.5]


# -- checkpoint and faults ----------------------------------------------------------------------------

class KilledAfter(LennardJonesModel):
    """Simulates a kill: raises KeyboardInterrupt once ``limit`` geometries were evaluated."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.seen = limit, 0

    def evaluate(self, atoms, positions):
        self.seen += positions.shape[0]
        if self.seen > self.limit:
            raise KeyboardInterrupt
        return super().evaluate(atoms, positions)


def test_resume_after_kill_keeps_every_minimum(tmp_path):
    path = tmp_path / "search.json"
    kwargs = dict(walkers=4, max_force_calls=3000, seed=5, checkpoint=str(path),
                  checkpoint_every=5)
    with pytest.raises(KeyboardInterrupt):
        ConformerSearch(random_cluster(19, seed=1), KilledAfter(1500), **kwargs).run()
    saved = json.loads(path.read_text())
    assert saved["minima"] and saved["calls"] <= 1500 + 4     # the killed batch counts
    search = ConformerSearch(random_cluster(19, seed=1), LennardJonesModel(), **kwargs)
    result = search.run()
    # the archive only grows; a record's energy only falls (a lower revisit, or
    # the final refinement of a loosely quenched minimum) and it stays the same minimum
    assert len(search.minima) > len(saved["minima"])
    for m, kept in zip(saved["minima"], search.minima):
        assert kept.energy <= m["energy"] + 1e-9
        moved = np.abs(cluster_fingerprint(kept.positions) - cluster_fingerprint(np.array(m["positions"])))
        assert moved.max() < search.rmsd_threshold
    assert result.force_calls <= 3000 and result.force_calls > saved["calls"]


def test_resume_in_another_exploration_space_keeps_every_minimum(ani, tmp_path):
    """A ring molecule's checkpoint from torsion space (ring_flips=False, or a
    version before ring flips) resumes in the Cartesian space of ring flips:
    the archive carries over, the excursions start afresh from home."""
    path = tmp_path / "search.json"
    atoms = read(MOLECULES / "methylcyclohexane_axial.xyz")
    kwargs = dict(walkers=2, seed=0, checkpoint=str(path), checkpoint_every=1)
    ConformerSearch(atoms, ani, max_force_calls=200, ring_flips=False, **kwargs).run()
    saved = json.loads(path.read_text())
    assert np.array(saved["ecd"]["x"]).shape[1:] == (1, 1)       # the methyl torsion
    search = ConformerSearch(atoms, ani, max_force_calls=600, **kwargs)
    result = search.run()
    assert search.walkers.x.shape[1:] == (len(atoms), 3)
    assert len(search.minima) >= len(saved["minima"])
    for m, kept in zip(saved["minima"], search.minima):
        assert kept.energy <= m["energy"] + 1e-9
    assert saved["calls"] < result.force_calls <= 600


def test_checkpoint_writes_take_at_most_a_twentieth_of_the_time(tmp_path):
    """After a write that took t, none comes before 19 t more: with a fake clock
    whose every reading advances one unit, a write "takes" one unit, and the
    next periodic one waits 19 steps even at checkpoint_every=1."""
    search = ConformerSearch(random_cluster(13, seed=0), LennardJonesModel(), walkers=2,
                             max_force_calls=1000, seed=0, checkpoint=str(tmp_path / "s.json"),
                             checkpoint_every=1)
    ticks = itertools.count()
    search._clock = lambda: float(next(ticks))
    written, save = [], search._save
    search._save = lambda path: (written.append(search.iteration), save(path))
    search.run()
    periodic = written[:-1]                  # the last write is run()'s final one
    assert len(periodic) >= 5
    assert set(np.diff(periodic)) == {19}


class NaNWalker(LennardJonesModel):
    """Walker 1's evaluations fail every third call."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def evaluate(self, atoms, positions):
        energy, forces = super().evaluate(atoms, positions)
        self.calls += 1
        if positions.shape[0] > 1 and self.calls % 3 == 0:
            energy[1] = float("nan")
        return energy, forces


def test_failing_walker_is_restarted_and_the_search_goes_on():
    result = ConformerSearch(random_cluster(13, seed=0), NaNWalker(), walkers=4,
                             max_force_calls=3000, seed=0).run()
    assert result.force_calls > 2000
    assert np.isfinite([c.info["energy"] for c in result.conformers]).all()
    assert result.best.info["energy"] < -40


@pytest.mark.parametrize("kwargs, match", [
    (dict(walkers=0), "walkers"),
    (dict(max_force_calls=3), "cannot pay"),
    (dict(kind="gas"), "kind"),
    (dict(kick="hard"), "kick"),
    (dict(kick_torsions=0), "kick_torsions"),
    (dict(top_weight=-1), "top_weight"),
    (dict(home_policy="random"), "home_policy"),
    (dict(home_temperature=-0.1), "home_temperature"),
    (dict(home_temperature=0), "home_temperature"),
    (dict(leave_at=0.5), "leave_at"),
    (dict(accept_above=0), "accept_above"),
    (dict(accept_rate=0.9), "accept_rate"),
    (dict(excursion_minima=-1), "excursion_minima"),
    (dict(kick_memory=-1), "kick_memory"),
    (dict(home_patience=-1), "home_patience"),
    (dict(restart_after=-1), "restart_after"),
    (dict(restart_stalled=-1), "restart_stalled"),
    (dict(restart_from="random"), "restart_from"),
    (dict(restart_from="sphere", starts=[random_cluster(7, seed=1)]), "restart_from"),
    (dict(surface_kicks=1.5), "surface_kicks"),
    (dict(surface_kicks=-0.1), "surface_kicks"),
    (dict(seed=-1), "seed"),
    (dict(temperature=-1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(excursion_energy=-1), "excursion_energy"),
    (dict(excursion_energy=float("inf")), "excursion_energy"),
    (dict(excursion_steps=-3), "excursion_steps"),
    (dict(energy_growth=0.5), "energy_growth"),
    (dict(harvest_after=2), "harvest_after"),
    (dict(kick_power=-1), "kick_power"),
    (dict(quench_fmax=-0.1), "quench_fmax"),
    (dict(refine_fmax=float("nan")), "refine_fmax"),
    (dict(screen_fmax=-1), "screen_fmax"),
    (dict(quench_steps=0), "quench_steps"),
    (dict(start_rattle=-0.1), "start_rattle"),
    (dict(target_energy=float("nan")), "target_energy"),
    (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(refine_reserve=1.0), "refine_reserve"),
    (dict(refine_reserve=-0.1), "refine_reserve"),
])
def test_bad_search_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConformerSearch(random_cluster(7, seed=0), **kwargs)


@pytest.mark.parametrize("surface_kicks, concentrated", [(1.0, True), (0.0, False)])
def test_surface_kicks_put_an_excursions_first_push_on_one_atom(surface_kicks, concentrated):
    """One step into each excursion, the momentum still sits where the kick put
    it: on one least-coordinated atom with surface_kicks=1, spread over the
    cluster's soft modes without."""
    shares = []

    def look(search):
        if bool(search.exploring[0]) and int(search.walkers.steps[0]) == 1:
            p = search.walkers.p[0].norm(dim=-1) ** 2
            shares.append(float(p.max() / p.sum()))
    search = ConformerSearch(random_cluster(13, seed=0), LennardJonesModel(), walkers=1,
                             max_force_calls=600, seed=0, surface_kicks=surface_kicks)
    search.attach(look)
    search.run()
    assert len(shares) >= 5
    # removing the rigid motions leaves ~80% of |p|^2 on the pushed atom of an icosahedron
    assert (min(shares) > 0.7) if concentrated else (max(shares) < 0.5)


@pytest.mark.parametrize("atoms, settings, expected", [
    (random_cluster(26, seed=0), {}, (0.5, 40)),
    (random_cluster(20, seed=0), {}, (0.5, 40)),
    (random_cluster(19, seed=0), {}, (0.0, 0)),
    (random_cluster(13, seed=0), {}, (0.0, 0)),
    (random_cluster(26, seed=0), dict(surface_kicks=0), (0.0, 0)),
    (random_cluster(26, seed=0), dict(restart_stalled=0), (0.5, 0)),
    (random_cluster(13, seed=0), dict(surface_kicks=0.25), (0.25, 40)),
    (molecule("CH3CH2OH"), {}, (0.0, 0)),
])
def test_surface_kicks_and_stall_restarts_default_on_for_clusters_of_20_atoms_or_more(
        atoms, settings, expected):
    calc = EMT() if len(set(atoms.numbers)) > 1 else LennardJonesModel()
    search = ConformerSearch(atoms, calc, **settings)
    assert (search.surface_kicks, search.restart_stalled) == expected


def test_a_large_clusters_default_search_mixes_surface_and_soft_kicks():
    """LJ26 with the defaults: some excursions start with the push on one atom,
    others spread over the soft modes."""
    shares = []

    def look(search):
        for w in range(search.W):
            if bool(search.exploring[w]) and int(search.walkers.steps[w]) == 1:
                p = search.walkers.p[w].norm(dim=-1) ** 2
                shares.append(float(p.max() / p.sum()))
    search = ConformerSearch(random_cluster(26, seed=0), LennardJonesModel(), walkers=2,
                             max_force_calls=1500, seed=0)
    search.attach(look)
    search.run()
    assert max(shares) > 0.7 and min(shares) < 0.5


def test_cluster_only_options_are_refused_for_a_molecule():
    with pytest.raises(ValueError, match="surface_kicks is for atomic clusters"):
        ConformerSearch(molecule("CH3CH2OH"), EMT(), surface_kicks=0.5)
    with pytest.raises(ValueError, match="restart_from='sphere' is for atomic clusters"):
        ConformerSearch(molecule("CH3CH2OH"), EMT(), restart_from="sphere")


def test_periodic_or_constrained_input_is_refused_not_searched_as_if_free():
    from ase.build import bulk
    from ase.constraints import FixAtoms
    with pytest.raises(ValueError, match="periodic"):
        ConformerSearch(bulk("Cu", cubic=True), EMT())
    atoms = molecule("CH3CH2OH")
    atoms.set_constraint(FixAtoms(indices=[0]))
    with pytest.raises(ValueError, match=r"does not apply constraints \(FixAtoms\)"):
        ConformerSearch(atoms, EMT())


def test_one_atom_is_rejected():
    atoms = random_cluster(7, seed=0)[:1]
    with pytest.raises(ValueError, match="at least 2 atoms"):
        ConformerSearch(atoms, LennardJonesModel())


def test_unsupported_element_fails_before_any_work(ani):
    atoms = molecule("CH3Cl")
    with pytest.raises(ValueError, match="Cl"):
        ConformerSearch(atoms, ani)


def test_trace_of_walker_energies_stays_bounded():
    search = ConformerSearch(random_cluster(13, seed=0), LennardJonesModel(), walkers=2,
                             max_force_calls=3000, seed=0)
    search.TRACE_ROWS = 100
    result = search.run()
    calls = [c for c, _ in result.trace]
    assert 50 <= len(calls) <= 101 and calls == sorted(calls)
    assert all(len(e) == 2 for _, e in result.trace)
    assert search.trace_stride > 1 and calls[-1] > 2000


def test_observers_see_progress():
    seen = []
    search = ConformerSearch(random_cluster(7, seed=0), LennardJonesModel(), walkers=2,
                             max_force_calls=400, seed=0)
    search.attach(lambda s: seen.append((s.calls, s.lowest, len(s.minima))), interval=5)
    search.run()
    assert len(seen) >= 10 and [c for c, _, _ in seen] == sorted(c for c, _, _ in seen)
    lows = [low for _, low, _ in seen]
    assert lows == sorted(lows, reverse=True) and np.isfinite(lows[-1])
    with pytest.raises(ValueError, match="interval"):
        search.attach(print, interval=0)


def test_smiles_starts_are_distinct_conformers_for_every_seed():
    pytest.importorskip("rdkit")
    from ecd_chem.structures import from_smiles
    for seed in (0, 1):
        frames = from_smiles("OCCO", conformers=8, seed=seed)
        distinct = {tuple(np.round(f.positions.ravel(), 3)) for f in frames}
        assert len(distinct) == 8


def test_no_conformer_with_the_input_bonds_is_a_clear_error():
    """EMT pulls butane apart: no minimum keeps its bonds, and the search says so."""
    atoms = read(MOLECULES / "n-butane.xyz")
    search = ConformerSearch(atoms, EMT(), walkers=2, max_force_calls=60)
    with pytest.raises(RuntimeError, match="no minimum with the input's bonds"):
        search.run()


@pytest.mark.parametrize("merge, reported", [(True, 1), (False, 2)])
def test_conformers_that_differ_only_in_a_methyl_turn_are_reported_once(merge, reported):
    """A flat methyl rotor leaves one conformer as records a few tenths of a
    kcal/mol apart; by default only the lowest is reported."""
    atoms = read(MOLECULES / "n-butane.xyz")
    search = ConformerSearch(atoms, EMT(), walkers=1, max_force_calls=4,
                             merge_top_rotamers=merge)
    search.run()                         # the budget ends before a quench does
    space = search.space
    turn = torch.zeros(1, space.count, 1, dtype=torch.float64)
    turn[0, int(np.flatnonzero(space.symmetric_top)[0])] = 0.7      # 40 degrees
    turned = space.move(torch.tensor(atoms.positions[None]), turn)[0].numpy()
    assert rmsd(atoms.positions, turned, search.classes) > search.rmsd_threshold
    zero = np.zeros_like(atoms.positions)
    search.minima = [Minimum(atoms.positions, -10.0, 5, gradient=zero),
                     Minimum(turned, -10.0 + 0.3 * 0.0434, 3, gradient=zero)]
    result = search.current_result()
    assert len(result.conformers) == reported
    assert result.best.info["energy"] == -10.0
    assert result.best.info["found_at_force_call"] == 5      # a rotamer is not the conformer's find
