"""The pure ECD integrator: update rule, conservation, bounces, exploration power."""
import math

import pytest
import torch

from ecd_chem import dynamics as ecd


def quadratic(x, k=2.0):
    """F = k/2 |x|^2 per walker."""
    return 0.5 * k * (x * x).flatten(1).sum(1), k * x


def ackley(x):
    x = x.detach().clone().requires_grad_(True)
    r = torch.sqrt(0.5 * (x ** 2).sum((1, 2)) + 1e-300)
    f = (-20 * torch.exp(-0.2 * r) - torch.exp(0.5 * torch.cos(2 * math.pi * x).sum((1, 2)))
         + math.e + 20)
    (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


def zakharov(x):
    x = x.detach().clone().requires_grad_(True)
    flat = x.flatten(1)
    i = torch.arange(1, flat.shape[1] + 1, dtype=x.dtype)
    s = (0.5 * i * flat).sum(1)
    f = (flat ** 2).sum(1) + s ** 2 + s ** 4
    (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


def run(state, fn, hp, n):
    for _ in range(n):
        state = ecd.step(state, fn, hp)
    return state


def test_one_bbi_step_matches_hand_computation():
    hp = ecd.ECDParams(method="bbi", dt=0.1, gap=0.5, conserve_energy=False, max_step=10.0)
    x = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)
    f, g = quadratic(x)                      # F = 1, dF/dx = (2, 0, 0)
    state = ecd.init(x, f, g, hp, seed=0)    # floor 0.5, V = 0.5, pi = 0, E = V
    assert float(state.energy[0]) == pytest.approx(0.5)
    state = ecd.propose(state, hp)
    # pi = 0 - dt/2 * dV * (E/V + V/E) = -0.1/2 * 2 * 2 = -0.2 ; x += dt * (V/E) * pi
    assert state.p[0, 0, 0].item() == pytest.approx(-0.2)
    assert state.x[0, 0, 0].item() == pytest.approx(1.0 - 0.02)
    # second step by hand, with the new V
    state = ecd.absorb(state, *quadratic(state.x), hp)
    V = 0.5 * 2 * 0.98 ** 2 - 0.5
    E = 0.5
    p = -0.2 - 0.05 * 2 * 0.98 * (E / V + V / E)
    state = ecd.propose(state, hp)
    assert state.p[0, 0, 0].item() == pytest.approx(p)
    assert state.x[0, 0, 0].item() == pytest.approx(0.98 + 0.1 * (V / E) * p)


@pytest.mark.parametrize("method", ["bbi", "ruthless", "sep"])
def test_energy_conserved_with_rescaling_and_drifts_without(method):
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 3, dtype=torch.float64)
    drift = {}
    for conserve in (True, False):
        # floor fixed well below the minimum (F >= 0, F(0) < 100): E never adapts
        hp = ecd.ECDParams(method=method, dt=0.05, gap=100.0, delta_energy=0.5,
                           conserve_energy=conserve, max_step=10.0)
        state = ecd.init(x0, *quadratic(x0), hp, seed=1)
        e0 = state.energy.clone()
        worst = 0.0
        for _ in range(200):
            state = ecd.step(state, quadratic, hp)
            rel = ((ecd.current_energy(state, hp) - e0) / e0.abs()).abs().max().item()
            worst = max(worst, rel)
        drift[conserve] = worst
    assert drift[True] < 1e-8
    assert drift[False] > 1e-4


def test_eta_generalization_conserves_and_descends():
    x0 = torch.full((1, 2, 3), 1.5, dtype=torch.float64)
    hp = ecd.ECDParams(method="bbi", eta=2.0, dt=0.02, gap=14.5, max_step=1.0)  # floor at -1
    state = run(ecd.init(x0, *quadratic(x0), hp, seed=0), quadratic, hp, 300)
    assert torch.allclose(ecd.current_energy(state, hp), state.energy, rtol=1e-8)
    assert state.best_f.item() < 0.1 * quadratic(x0)[0].item()


def test_same_seed_same_trajectory_bit_for_bit():
    x0 = torch.tensor([[[2.2, 1.7, 0.0]]], dtype=torch.float64)
    hp = ecd.ECDParams(dt=0.05, delta_energy=2.0, gap=7.0, bounce_every=10, fixed_bounces=5,
                       bounce_patience=20)
    a = run(ecd.init(x0, *ackley(x0), hp, seed=42), ackley, hp, 200)
    b = run(ecd.init(x0, *ackley(x0), hp, seed=42), ackley, hp, 200)
    c = run(ecd.init(x0, *ackley(x0), hp, seed=43), ackley, hp, 200)
    assert torch.equal(a.x, b.x) and torch.equal(a.p, b.p)
    assert not torch.equal(a.x, c.x)


def test_bounces_keep_speed_and_follow_schedule():
    x0 = torch.tensor([[[1.0, 0.3, -0.2]]], dtype=torch.float64)
    hp = ecd.ECDParams(dt=0.01, gap=1.0, delta_energy=1.0, bounce_every=5, fixed_bounces=3,
                       max_step=10.0)
    state = ecd.init(x0, *quadratic(x0), hp, seed=0)
    for _ in range(40):
        state = ecd.step(state, quadratic, hp)
    assert state.fixed_done.item() == 3 and state.bounces.item() == 3
    before = state.replace(since_best=torch.tensor([7]))
    after = ecd.bounce(before, torch.tensor([True]))
    assert torch.linalg.vector_norm(after.p).item() == pytest.approx(
        torch.linalg.vector_norm(before.p).item())
    assert not torch.allclose(after.p, before.p)


def test_walkers_are_independent():
    """A batch of walkers equals each walker run alone (no leakage between walkers)."""
    torch.manual_seed(3)
    x0 = torch.randn(4, 3, 3, dtype=torch.float64)
    hp = ecd.ECDParams(dt=0.05, gap=0.5, max_step=0.1)
    batch = run(ecd.init(x0, *quadratic(x0), hp, seed=0), quadratic, hp, 50)
    for w in range(4):
        alone = run(ecd.init(x0[w:w + 1], *quadratic(x0[w:w + 1]), hp, seed=0), quadratic, hp, 50)
        assert torch.allclose(alone.x[0], batch.x[w], atol=1e-12)


def test_adaptive_floor_keeps_v_positive():
    x0 = torch.tensor([[[3.0, 0.0, 0.0]]], dtype=torch.float64)
    hp = ecd.ECDParams(dt=0.1, gap=0.01, max_step=1.0)    # floor far too high at first
    state = ecd.init(x0, *quadratic(x0), hp, seed=0)
    for _ in range(100):
        state = ecd.step(state, quadratic, hp)
        assert (state.f - state.floor > 0).all()
    assert state.floor.item() < 9.0 - 0.01


ACKLEY_STARTS = [(2.2, 1.7), (-1.8, 2.4), (2.9, -1.1), (-2.6, -2.2), (1.1, 2.9)]


def heavy_ball(x, lr=0.01, momentum=0.9, n=3000):
    v = torch.zeros_like(x)
    for _ in range(n):
        v = momentum * v - lr * ackley(x)[1]
        x = x + v
    return x


@pytest.mark.parametrize("start", ACKLEY_STARTS)
def test_gradient_descent_with_momentum_stops_in_a_side_minimum(start):
    x = heavy_ball(torch.tensor([[list(start)]], dtype=torch.float64))
    assert torch.linalg.vector_norm(x).item() > 1.0


def test_bbi_finds_ackley_global_minimum_from_those_starts():
    """20 seeds over the 5 starts above, 2000 steps each: the walker reaches the
    origin basin (|x| < 0.3) in at least 18 of 20 (measured: 20 of 20)."""
    hits = 0
    for seed in range(20):
        x0 = torch.tensor([[list(ACKLEY_STARTS[seed % 5])]], dtype=torch.float64)
        f0, g0 = ackley(x0)
        hp = ecd.ECDParams(dt=0.05, delta_energy=2.0, gap=f0.item() + 1e-4, bounce_every=20,
                           fixed_bounces=4, bounce_patience=100, max_step=1.0)
        state = run(ecd.init(x0, f0, g0, hp, seed=seed), ackley, hp, 2000)
        hits += torch.linalg.vector_norm(state.best_x).item() < 0.3
    assert hits >= 18


def test_bbi_zakharov_10d():
    torch.manual_seed(0)
    x0 = torch.rand(1, 1, 10, dtype=torch.float64) * 10 - 5
    f0, g0 = zakharov(x0)
    hp = ecd.ECDParams(dt=0.05, gap=f0.item(), max_step=1.0)   # floor at the known minimum, 0
    state = run(ecd.init(x0, f0, g0, hp, seed=0), zakharov, hp, 5000)
    assert state.best_f.item() < 1e-3


def test_quench_converges_on_a_stiff_quadratic():
    torch.manual_seed(0)
    k = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)

    def stiff(x):
        return 0.5 * (k * x * x).flatten(1).sum(1), k * x

    x0 = torch.randn(2, 5, 3, dtype=torch.float64)
    state = ecd.quench_init(x0, *stiff(x0))
    for _ in range(60):
        state = ecd.quench_propose(state)
        state = ecd.quench_absorb(state, *stiff(state.x))
    assert ecd.max_force(state.g).max().item() < 1e-6


@pytest.mark.parametrize("precon", [False, "exp"])
def test_quench_step_of_some_walkers_equals_the_full_step_on_them(precon):
    """``active`` steps only some walkers: their proposals are the full batch's,
    the others come back untouched (the search quenches some walkers while the
    others explore)."""
    k = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)

    def stiff(x):
        return 0.5 * (k * x * x).flatten(1).sum(1), k * x

    qp = ecd.QuenchParams(precon=ecd.quench_preconditioner(precon))
    x0 = torch.randn(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    state = ecd.quench_init(x0, *stiff(x0), qp)
    for _ in range(3):                                 # some curvature history
        stepped = ecd.quench_propose(state, qp)
        state = ecd.quench_absorb(stepped, *stiff(stepped.x))
    active = torch.tensor([True, False, True, False])
    full, part = ecd.quench_propose(state, qp), ecd.quench_propose(state, qp, active)
    for name in ("x", "x_prev", "g_prev", "f_prev"):
        assert torch.allclose(getattr(part, name)[active], getattr(full, name)[active], atol=1e-12)
    assert torch.equal(part.x[~active], state.x[~active])
    assert torch.equal(part.x_prev[~active], state.x_prev[~active])
    assert ecd.quench_propose(state, qp, torch.zeros(4, dtype=torch.bool)) is state
    rows = torch.tensor([2, 0])
    assert torch.equal(ecd.take_rows(state, rows).s, state.s[rows])


@pytest.mark.parametrize("bad", [dict(dt=0), dict(dt=-1), dict(eta=0.5), dict(delta_energy=-1),
                                 dict(gap=0), dict(method="leapfrog"), dict(dt=float("nan"))])
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValueError):
        ecd.ECDParams(**bad)


def test_state_roundtrip_through_dict():
    x0 = torch.randn(2, 3, 3, dtype=torch.float64)
    hp = ecd.ECDParams(bounce_every=3, fixed_bounces=10)
    state = run(ecd.init(x0, *quadratic(x0), hp, seed=5), quadratic, hp, 7)
    clone = ecd.ECDState.from_dict(state.to_dict())
    a = run(state, quadratic, hp, 10)
    b = run(clone, quadratic, hp, 10)
    assert torch.equal(a.x, b.x)


def test_quench_until_evaluates_only_unconverged_walkers():
    k = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    seen = []

    def stiff(x):
        seen.append(x.shape[0])
        return 0.5 * (k * x * x).flatten(1).sum(1), k * x

    x0 = torch.randn(3, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0[0] = 1e-9                                      # walker 0 starts converged (|F| < 1e-6)
    f, g = 0.5 * (k * x0 * x0).flatten(1).sum(1), k * x0
    state, converged, used = ecd.quench_until(ecd.quench_init(x0, f, g), stiff, 1e-6, 100)
    assert converged.all() and used[0] == 0 and used[1:].min() > 0
    assert sum(seen) == int(used.sum()) and max(seen) <= 2
    state, converged, used = ecd.quench_until(ecd.quench_init(x0, f, g), stiff, 1e-6, 100, budget=7)
    assert int(used.sum()) <= 7 and not converged.all()


def test_exp_preconditioner_is_symmetric_positive_definite_per_walker():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 9, 3, generator=gen, dtype=torch.float64) * 4
    lap = ecd.exp_preconditioner(x)
    assert lap.shape == (3, 9, 9)
    assert torch.allclose(lap, lap.transpose(1, 2))
    assert torch.linalg.eigvalsh(lap).min() > 0.05        # c_stab keeps it invertible
    assert torch.allclose(ecd.exp_preconditioner(x[1:2])[0], lap[1])   # walkers independent


def test_preconditioner_solvers_apply_the_inverse_to_every_column():
    """P^-1 u for u (W, k, 3N), the factorization reused across calls: Exp acts
    on each Cartesian component (P = lap kron I3), the bonded model on all 3N."""
    from ecd_chem.structures import bond_graph
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(3, 7, 3, generator=gen, dtype=torch.float64) * 3
    u = torch.randn(3, 5, 21, generator=gen, dtype=torch.float64)
    full = torch.kron(ecd.exp_preconditioner(x), torch.eye(3, dtype=torch.float64))
    solve = ecd.preconditioner_solver(True, x)
    for columns in (u, u[:, :1], u[:, 2:]):
        expected = torch.linalg.solve(full, columns.transpose(1, 2)).transpose(1, 2)
        assert torch.allclose(solve(columns), expected, atol=1e-10)
    atoms, _, xb = _turned_ethanol_starts(count=2)
    bonded = ecd.BondedPreconditioner(bond_graph(atoms))
    ub = torch.randn(2, 4, 27, generator=gen, dtype=torch.float64)
    solve = ecd.preconditioner_solver(bonded, xb)
    for columns in (ub, ub[:, 1:2]):
        expected = torch.linalg.solve(bonded.matrix(xb), columns.transpose(1, 2)).transpose(1, 2)
        assert torch.allclose(solve(columns), expected, atol=1e-10)


def test_preconditioned_quench_reaches_the_same_minimum_in_fewer_steps():
    from ase.build import molecule
    from ecd_chem.calculators import ANIModel, Evaluator
    atoms = molecule("CH3CH2OH")
    evaluate = Evaluator(ANIModel("ani1x", dtype=torch.float64), atoms)
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor(atoms.positions) + 0.08 * torch.randn(4, len(atoms), 3, generator=gen,
                                                         dtype=torch.float64)
    f, g = evaluate(x)
    runs = {}
    for precon in (False, True):
        qp = ecd.QuenchParams(memory=30, precon=precon)
        runs[precon] = ecd.quench_until(ecd.quench_init(x, f, g, qp), evaluate, 0.01, 300, qp)
    (plain, plain_ok, plain_used), (pre, pre_ok, pre_used) = runs[False], runs[True]
    assert plain_ok.all() and pre_ok.all()
    assert torch.allclose(pre.f, plain.f, atol=2e-4)                 # eV
    assert int(pre_used.sum()) < int(plain_used.sum())


def _turned_ethanol_starts(count=4, seed=0):
    """Ethanol minimum (ANI-1x) with its C-O torsion turned by 1-3 rad: quench starts
    like the search's, where groups must turn about bonds."""
    from ase.build import molecule
    from ecd_chem.calculators import ANIModel, Evaluator
    from ecd_chem.structures import TorsionSpace, bond_graph
    atoms = molecule("CH3CH2OH")
    evaluate = Evaluator(ANIModel("ani1x", dtype=torch.float64), atoms)
    x = torch.tensor(atoms.positions)[None]
    qp = ecd.QuenchParams(memory=30, precon=True)
    home = ecd.quench_until(ecd.quench_init(x, *evaluate(x), qp), evaluate, 0.01, 300, qp)[0].x
    space = TorsionSpace(bond_graph(atoms), atoms.numbers)
    gen = torch.Generator().manual_seed(seed)
    turn = (1 + 2 * torch.rand(count, space.count, 1, generator=gen, dtype=torch.float64))
    return atoms, evaluate, space.move(home.expand(count, -1, -1).clone(), turn)


def test_bonded_preconditioner_is_spd_stiff_along_bonds_and_soft_for_torsions():
    from ecd_chem.structures import TorsionSpace, bond_graph
    atoms, _, x = _turned_ethanol_starts(count=2)
    precon = ecd.BondedPreconditioner(bond_graph(atoms))
    P = precon.matrix(x)
    assert P.shape == (2, 27, 27) and torch.allclose(P, P.transpose(1, 2))
    assert torch.linalg.eigvalsh(P).min() >= precon.mu * (1 - 1e-9)
    assert torch.allclose(precon.matrix(x[1:])[0], P[1])                 # walkers independent
    # curvature u.P.u of unit displacements: a C-C stretch against a turn about C-C
    stretch = torch.zeros(27, dtype=torch.float64)
    c0, c1 = x[0, 0], x[0, 1]                                            # ethanol's two carbons
    stretch[3:6] = (c1 - c0) / (c1 - c0).norm()
    space = TorsionSpace(bond_graph(atoms), atoms.numbers)
    turn = (space.move(x[:1].clone(), torch.full((1, space.count, 1), 1e-4, dtype=torch.float64))
            - x[:1]).flatten()
    curvature = [float(u @ P[0] @ u / (u @ u)) for u in (stretch, turn)]
    assert curvature[0] > 100 * curvature[1]


@pytest.mark.parametrize("name", ["CH3CH2OH", "C6H6", "CH3CONH2"])
def test_bonded_preconditioner_wilson_matrix_is_the_derivative_of_the_internals(name):
    """The closed-form B rows equal autograd's d internals / dx (dihedral rows
    up to their sign, which P = B^T K B does not see)."""
    from ase.build import molecule
    from ecd_chem.structures import bond_graph
    atoms = molecule(name)
    atoms.rattle(0.05, seed=1)
    precon = ecd.BondedPreconditioner(bond_graph(atoms))
    x = torch.tensor(atoms.positions)[None] + 0.03 * torch.randn(
        2, len(atoms), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    closed = precon.wilson(x)
    exact = torch.func.vmap(torch.func.jacrev(precon.internals))(x)
    same = (closed - exact).abs().amax(dim=(0, 2, 3))
    flipped = (closed + exact).abs().amax(dim=(0, 2, 3))
    dihedral = torch.arange(len(same)) >= len(precon.bonds) + len(precon.angles)
    assert (same[~dihedral] < 1e-8).all()
    assert (torch.minimum(same, flipped)[dihedral] < 1e-8).all()
    assert len(precon.dihedrals) > 0


def test_bonded_preconditioner_stays_finite_at_linear_angles():
    from ase.build import molecule
    from ecd_chem.structures import bond_graph
    atoms = molecule("C2H2")                                             # H-C-C-H, 180 degrees
    precon = ecd.BondedPreconditioner(bond_graph(atoms))
    x = torch.tensor(atoms.positions)[None]
    solved = precon(x)(torch.ones(1, 2, 3 * len(atoms), dtype=torch.float64))
    assert torch.isfinite(precon.matrix(x)).all() and torch.isfinite(solved).all()


def test_bonded_preconditioner_quenches_turned_torsions_in_fewer_calls_than_exp():
    from ecd_chem.structures import bond_graph
    atoms, evaluate, x = _turned_ethanol_starts(count=6)
    f, g = evaluate(x)
    used = {}
    for name, precon in (("exp", True), ("bonded", ecd.BondedPreconditioner(bond_graph(atoms)))):
        qp = ecd.QuenchParams(memory=30, precon=precon)
        state, converged, calls = ecd.quench_until(ecd.quench_init(x, f, g, qp), evaluate, 0.05, 300, qp)
        assert converged.all()
        used[name] = int(calls.sum())
    assert used["bonded"] < 0.8 * used["exp"]


def _spd(D, seed, soft=None):
    """A random symmetric positive-definite matrix (D, D); its eigenvalues and vectors."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    k = torch.linspace(1.0, 10.0, D, dtype=torch.float64)
    if soft is not None:
        k[0] = soft
    return Q @ torch.diag(k) @ Q.T, k, Q


def test_inverse_hessian_model_is_exact_after_conjugate_pairs_of_a_quadratic():
    D = 6
    A, _, Q = _spd(D, 0)
    s = Q.T[None]                                  # eigenvectors are A-conjugate
    y = s @ A
    v = torch.randn(2, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Hv = ecd.inverse_hessian_apply(s.expand(2, D, D), y.expand(2, D, D), v, 1 / 70)
    assert torch.allclose(Hv, torch.linalg.solve(A, v.T).T, atol=1e-10)
    # no pairs at all: the fallback scale times v
    zeros = torch.zeros(2, 3, D, dtype=torch.float64)
    assert torch.allclose(ecd.inverse_hessian_apply(zeros, zeros, v, 0.5), 0.5 * v)


def _two_loop(s, y, v, fallback, precondition=None):
    """The textbook L-BFGS two-loop recursion (Nocedal & Wright, Alg. 7.4), one
    walker at a time, pairs with s.y <= 0 skipped: the reference for the
    batched compact form."""
    out = []
    for w in range(v.shape[0]):
        pairs = [(s[w, i], y[w, i]) for i in range(s.shape[1]) if float(s[w, i] @ y[w, i]) > 0]
        q, alphas = v[w].clone(), []
        for si, yi in reversed(pairs):
            a = (si @ q) / (si @ yi)
            q = q - a * yi
            alphas.append(a)
        apply = (lambda u: precondition(u[None, None])[0, 0]) if precondition else (lambda u: u)
        yl = y[w, -1]
        newest = float(s[w, -1] @ yl) > 0 and float(yl @ apply(yl)) > 0
        gamma = (s[w, -1] @ yl) / (yl @ apply(yl)) if newest else fallback
        r = gamma * apply(q)
        for (si, yi), a in zip(pairs, reversed(alphas)):
            r = r + (a - (yi @ r) / (si @ yi)) * si
        out.append(r)
    return torch.stack(out)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_compact_inverse_hessian_equals_the_two_loop_recursion(preconditioned):
    gen = torch.Generator().manual_seed(3)
    W, m, D = 4, 7, 9
    A, _, _ = _spd(D, 1)
    s = torch.randn(W, m, D, generator=gen, dtype=torch.float64)
    y = s @ A + 0.3 * torch.randn(W, m, D, generator=gen, dtype=torch.float64)
    s[0, :3] = y[0, :3] = 0.0             # a short history: leading rows unused
    s[1] = y[1] = 0.0                     # none at all
    y[2, 4] = -s[2, 4]                    # negative curvature in the middle: skipped
    y[3, -1] = -s[3, -1]                  # ... and as the newest pair: gamma falls back
    v = torch.randn(W, D, generator=gen, dtype=torch.float64)
    P, _, _ = _spd(D, 2)
    precondition = (lambda u: torch.linalg.solve(P, u.transpose(1, 2)).transpose(1, 2)) if preconditioned else None
    compact = ecd.inverse_hessian_apply(s, y, v, 0.05, precondition)
    assert torch.allclose(compact, _two_loop(s, y, v, 0.05, precondition), rtol=1e-9, atol=1e-12)


def test_rigid_free_removes_translation_and_rotation_only():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 3, generator=gen, dtype=torch.float64)
    shift = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    axis = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(3, 7, 3)
    spin = torch.cross(axis, x - x.mean(1, keepdim=True), dim=-1)
    rigid = torch.stack([shift.expand(7, 3), spin[1], shift + spin[2]])
    assert ecd.rigid_free(x, rigid).abs().max() < 1e-12
    d = torch.randn(3, 7, 3, generator=gen, dtype=torch.float64)
    free = ecd.rigid_free(x, d)
    assert torch.allclose(ecd.rigid_free(x, free), free, atol=1e-12)     # a projection
    assert torch.allclose(ecd.rigid_free(x, free + rigid), free, atol=1e-12)
    assert free.sum(1).abs().max() < 1e-12                                # no net translation


def test_soft_directions_follow_the_softest_mode_of_the_model():
    """All atoms at one point: the rotations are null and only translations are removed."""
    N = 4
    D = 3 * N
    A, k, Q = _spd(D, 3, soft=0.01)
    s = Q.T[None].expand(2, D, D)
    y = s @ A
    x = torch.zeros(2, N, 3, dtype=torch.float64)
    draw = ecd.soft_directions(s, y, power=3)
    d = draw(x, torch.Generator().manual_seed(4))
    assert d.shape == (2, N, 3)
    soft_mode = ecd.rigid_free(x, Q[:, 0].reshape(1, N, 3).expand(2, N, 3))
    cos = (d * soft_mode).flatten(1).sum(1) / (d.flatten(1).norm(dim=1) * soft_mode.flatten(1).norm(dim=1))
    assert cos.abs().min() > 0.99
    # with no curvature pairs it is the isotropic draw less rigid motions
    none = torch.zeros(2, 5, D, dtype=torch.float64)
    plain = ecd.soft_directions(none, none)(x, torch.Generator().manual_seed(4))
    iso = ecd.rigid_free(x, ecd.isotropic(x, torch.Generator().manual_seed(4)))
    assert torch.allclose(plain / plain.flatten(1).norm(dim=1)[:, None, None],
                          iso / iso.flatten(1).norm(dim=1)[:, None, None], atol=1e-12)


def test_surface_directions_push_the_least_coordinated_atom_along_the_surface():
    """An icosahedron with one atom on top of a vertex: that adatom (one
    neighbour) takes the push, tangent to the cluster; at probability 0 the
    base directions come through unchanged."""
    from ase.cluster import Icosahedron
    core = torch.tensor(Icosahedron("Ar", 2).positions)
    core = core - core.mean(0)
    vertex = core[core.norm(dim=1).argmax()]
    nearest = torch.pdist(core).min()
    top = vertex + nearest * vertex / vertex.norm()
    x = torch.cat([core, top[None]])[None].expand(16, -1, -1).contiguous()
    d = ecd.surface_directions(ecd.isotropic, 1.0)(x, torch.Generator().manual_seed(0))
    norms = d.norm(dim=-1)                                                # (16, 14)
    assert (norms.argmax(1) == 13).all()
    assert (norms[:, 13] > 3 * norms[:, :13].amax(1)).all()
    radial = (top - x[0].mean(0)) / (top - x[0].mean(0)).norm()
    assert (d[:, 13] @ radial).abs().max() < 1e-9 * norms[:, 13].min()
    assert len({tuple(v.tolist()) for v in d[:, 13].round(decimals=6)}) == 16   # random directions
    base = ecd.isotropic(x, torch.Generator().manual_seed(3))
    same = ecd.surface_directions(ecd.isotropic, 0.0)(x, torch.Generator().manual_seed(3))
    assert torch.equal(same, base)


def test_sparse_directions_put_the_momentum_on_count_coordinates_drawn_by_weight():
    weights = torch.tensor([1.0, 0.0, 1.0, 0.3, 1.0])
    x = torch.zeros(400, 5, 1, dtype=torch.float64)
    d = ecd.sparse_directions(weights, 2)(x, torch.Generator().manual_seed(0)).flatten(1)
    chosen = d != 0
    assert (chosen.sum(1) == 2).all()                  # every walker: exactly two
    assert not chosen[:, 1].any()                      # weight 0: never
    share = chosen.double().mean(0)
    assert share[3] < 0.5 * share[[0, 2, 4]].min()     # weight 0.3: less often
    assert len({tuple(row) for row in chosen.tolist()}) > 3    # walkers draw apart
    # more than the positive weights allow: all of those, and no more
    d = ecd.sparse_directions(weights, 9)(x[:3], torch.Generator().manual_seed(1)).flatten(1)
    assert ((d != 0) == (weights > 0)).all()
    for bad in ([0.0, 0.0], [1.0, -1.0]):
        with pytest.raises(ValueError, match="weights"):
            ecd.sparse_directions(torch.tensor(bad))


def test_avoiding_removes_the_span_of_each_walker_s_vectors_and_nothing_else():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 4, 3, dtype=torch.float64)
    a, b = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    # walker 0 avoids a and b (b given twice: a repeat adds nothing), walker 1
    # nothing, walker 2 a only
    draw = ecd.avoiding(ecd.isotropic, [[a, b, 2 * b], [], [a]])
    d = draw(x, torch.Generator().manual_seed(1))
    plain = ecd.isotropic(x, torch.Generator().manual_seed(1))
    assert torch.equal(d[1], plain[1])
    for v in (a, b):
        assert float((d[0] * v).sum()) == pytest.approx(0, abs=1e-12)
    assert float((d[2] * a).sum()) == pytest.approx(0, abs=1e-12)
    assert float((d[2] * b).sum()) != pytest.approx(0, abs=1e-6)
    # what is left of walker 2 is its draw less its component along a
    unit = a / a.norm()
    assert torch.allclose(d[2], plain[2] - (plain[2] * unit).sum() * unit)


def test_soft_kicks_point_along_low_curvature_at_a_quenched_lj_minimum():
    """What the search's kick='soft' relies on: the pairs a quench leaves behind
    find the soft modes of the minimum it reached, with no extra force calls."""
    from ecd_chem.calculators import Evaluator
    from ecd_chem.potentials import LennardJonesModel, random_cluster
    atoms = random_cluster(13, seed=0)
    evaluate = Evaluator(LennardJonesModel(), atoms)
    x = torch.tensor(atoms.positions)[None]
    qp = ecd.QuenchParams(memory=30)
    state, converged, _ = ecd.quench_until(ecd.quench_init(x, *evaluate(x), qp), evaluate,
                                           1e-3, 2000, qp)
    assert converged.all()
    rng = torch.Generator().manual_seed(0)
    home = state.x.expand(32, 13, 3)

    def curvature(d):
        d = d / d.flatten(1).norm(dim=1)[:, None, None]
        h = 1e-4
        _, g_plus = evaluate(home + h * d)
        _, g_minus = evaluate(home - h * d)
        return ((g_plus - g_minus) * d).flatten(1).sum(1) / (2 * h)

    soft = ecd.soft_directions(state.s.expand(32, -1, -1), state.y.expand(32, -1, -1))(home, rng)
    plain = ecd.rigid_free(home, ecd.isotropic(home, rng))
    assert curvature(soft).mean() < 0.4 * curvature(plain).mean()   # measured 0.27
