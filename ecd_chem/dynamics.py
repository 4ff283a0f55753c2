"""Energy-Conserving Descent over a batch of walkers, as pure functions.

Everything here works on torch tensors with a leading walker axis: positions,
momenta and gradients are ``(W, N, 3)`` ("per atom"), energies and counters are
``(W,)`` ("per walker"). Units are the caller's (eV and Angstrom with ASE).
Branching between walkers is done with masks, never with Python ``if`` on one
walker, so one walker's trouble does not leak into another.

The ECD step is split in two so that any force provider can sit in between::

    state = propose(state, hp)            # bounce, kick, drift -> state.x is new
    energy, gradient = model(state.x)     # one force call per walker
    state = absorb(state, energy, gradient, hp)

``step(state, evaluate, hp)`` does the three together.

Hamiltonians (``hp.method``), with the shifted potential V = F - dV and
g(V) = V**eta:

* ``"bbi"``  Born-Infeld, E = sqrt(g (g + pi^2)).  Speed limit: |dx/dt| < sqrt(g).
* ``"ruthless"``  non-relativistic with mass 1/g(V): E = g (1 + pi^2/2).
* ``"sep"``  separable ECDSep, E = log g + log(1 + pi^2), with momentum noise nu.
  The displacement per step never exceeds dt.

The L-BFGS quench at the bottom of this module is the converging mode used to
polish minima (ECDOpt's closing phase, the search's quenches).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

METHODS = ("bbi", "ruthless", "sep")


@dataclass(frozen=True)
class ECDParams:
    """Hyperparameters of the ECD dynamics (caller's units: eV, Angstrom).

    dt: time step; with ``bbi`` the first step from rest moves dt^2 * |force|.
    eta: exponent of g(V) = V**eta (>= 1); larger concentrates time at small V.
    method: "bbi", "ruthless" or "sep".
    conserve_energy: rescale |pi| after every step so that E is exact.
    delta_energy: extra initial energy dE >= 0 (for "sep": the initial pi^2).
    gap: initial height of F above the floor, dV = F(0) - gap (energy units).
        Whenever a step lands at V <= 0 the floor is lowered to F - gap.
    bounce_every, fixed_bounces: T0 and N_b, a fixed bounce every T0 steps,
        N_b times (0 disables).
    bounce_patience: T1, bounce after this many steps without a new lowest F
        (0 disables).
    nu: ECDSep momentum-direction noise per step (scaled by 1/sqrt(3N)).
    max_step: cap on any atom's displacement in one step (length units).
    """

    method: str = "bbi"
    dt: float = 0.1
    eta: float = 1.0
    conserve_energy: bool = True
    delta_energy: float = 0.0
    gap: float = 1.0
    bounce_every: int = 0
    fixed_bounces: int = 0
    bounce_patience: int = 0
    nu: float = 0.0
    max_step: float = 0.2

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown ECD method {self.method!r}; choose one of {METHODS}")
        numbers = (self.dt, self.eta, self.delta_energy, self.gap, self.max_step, self.nu)
        if not all(map(math.isfinite, numbers)):
            raise ValueError("ECD parameters must be finite numbers")
        checks = [
            (self.dt > 0, f"dt must be > 0, got {self.dt}"),
            (self.eta >= 1, f"eta must be >= 1, got {self.eta}"),
            (self.delta_energy >= 0, f"delta_energy must be >= 0, got {self.delta_energy}"),
            (self.gap > 0, f"gap must be > 0, got {self.gap}"),
            (self.max_step > 0, f"max_step must be > 0, got {self.max_step}"),
            (self.nu >= 0, f"nu must be >= 0, got {self.nu}"),
            (min(self.bounce_every, self.fixed_bounces, self.bounce_patience) >= 0,
             "bounce counts must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class ECDState:
    """Batched walker state. Shapes: W walkers, N atoms (or rows of 3 dofs)."""

    x: torch.Tensor          # (W, N, 3) positions
    p: torch.Tensor          # (W, N, 3) momentum pi
    f: torch.Tensor          # (W,) objective F at x
    g: torch.Tensor          # (W, N, 3) gradient dF/dx at x
    energy: torch.Tensor     # (W,) conserved E (for "sep": log E)
    floor: torch.Tensor      # (W,) dV, V = F - dV
    movable: torch.Tensor    # (W, N, 1) 1 for free atoms, 0 for frozen ones
    best_f: torch.Tensor     # (W,) lowest F seen
    best_x: torch.Tensor     # (W, N, 3) where it was seen
    best_g: torch.Tensor     # (W, N, 3) gradient there
    since_best: torch.Tensor   # (W,) steps since best_f improved
    since_fixed: torch.Tensor  # (W,) steps since the last fixed bounce
    fixed_done: torch.Tensor   # (W,) fixed bounces performed
    bounces: torch.Tensor      # (W,) bounces performed (both kinds)
    steps: torch.Tensor        # (W,) ECD steps taken
    rng: torch.Generator

    def replace(self, **changes) -> "ECDState":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain nested lists (JSON-ready), the RNG state included."""
        out = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "rng":
                out["rng"] = value.get_state().tolist()
            else:
                out[field.name] = value.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict, dtype=torch.float64, device="cpu") -> "ECDState":
        rng = torch.Generator(device=device)
        rng.set_state(torch.tensor(data["rng"], dtype=torch.uint8))
        kwargs = {"rng": rng}
        for field in fields(cls):
            if field.name == "rng":
                continue
            integer = field.name in ("since_best", "since_fixed", "fixed_done", "bounces", "steps")
            kwargs[field.name] = torch.tensor(
                data[field.name], dtype=torch.long if integer else dtype, device=device)
        return cls(**kwargs)


# --- the three Hamiltonians ---------------------------------------------------

def _g(v, eta):
    return v ** eta


def hamiltonian(method: str, gv: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """E(g(V), pi^2) for each walker."""
    if method == "bbi":
        return torch.sqrt(gv * (gv + p2))
    if method == "ruthless":
        return gv * (1.0 + 0.5 * p2)
    return torch.log(gv) + torch.log1p(p2)


def momentum_sq(method: str, energy: torch.Tensor, gv: torch.Tensor) -> torch.Tensor:
    """pi^2 that makes E exact at g(V); negative where no momentum can."""
    if method == "bbi":
        return energy ** 2 / gv - gv
    if method == "ruthless":
        return 2.0 * (energy / gv - 1.0)
    return torch.exp(energy - torch.log(gv)) - 1.0


def _wsum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the walker axis: (W, ...) -> (W,)."""
    return t.flatten(1).sum(1)


def _bcast(per_walker: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_walker.reshape(-1, *([1] * (like.dim() - 1)))


def _unit(t: torch.Tensor) -> torch.Tensor:
    norm = torch.sqrt(_wsum(t * t)).clamp_min(1e-300)
    return t / _bcast(norm, t)


# --- init / propose / absorb ----------------------------------------------------

def init(x, f, g, hp: ECDParams, *, seed=None, rng=None, movable=None) -> ECDState:
    """Start W walkers at x (W, N, 3) with energies f (W,) and gradients g.

    The floor starts ``hp.gap`` below each walker's F. pi(0) points along -grad F
    with the magnitude the extra energy ``hp.delta_energy`` gives it (zero by default).
    """
    x = torch.as_tensor(x)
    f = torch.as_tensor(f, dtype=x.dtype, device=x.device)
    g = torch.as_tensor(g, dtype=x.dtype, device=x.device)
    if rng is None:
        rng = torch.Generator(device=x.device)
        rng.manual_seed(int(seed) if seed is not None else torch.seed())
    if movable is None:
        movable = torch.ones(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)
    W = x.shape[0]
    floor = f - hp.gap
    gv = _g(f - floor, hp.eta)
    zero = torch.zeros(W, dtype=x.dtype, device=x.device)
    if hp.method == "sep":
        energy = torch.log(gv) + math.log1p(hp.delta_energy)
    else:
        energy = hamiltonian(hp.method, gv, zero) + hp.delta_energy
    p2 = momentum_sq(hp.method, energy, gv).clamp_min(0)
    direction = -g * movable
    no_force = _wsum(direction * direction) == 0
    if bool(no_force.any()):
        random = torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device) * movable
        direction = torch.where(_bcast(no_force, x), random, direction)
    p = _unit(direction) * _bcast(torch.sqrt(p2), x)
    counters = torch.zeros(W, dtype=torch.long, device=x.device)
    return ECDState(x=x.clone(), p=p, f=f.clone(), g=g.clone(), energy=energy, floor=floor,
                    movable=movable, best_f=f.clone(), best_x=x.clone(), best_g=g.clone(),
                    since_best=counters.clone(), since_fixed=counters.clone(),
                    fixed_done=counters.clone(), bounces=counters.clone(),
                    steps=counters.clone(), rng=rng)


def bounce_due(state: ECDState, hp: ECDParams):
    """(fixed, progress) masks (W,) of walkers whose momentum is redirected now."""
    fixed = ((state.since_fixed >= hp.bounce_every) & (state.fixed_done < hp.fixed_bounces)
             if hp.bounce_every > 0 else torch.zeros_like(state.steps, dtype=torch.bool))
    progress = (state.since_best >= hp.bounce_patience if hp.bounce_patience > 0
                else torch.zeros_like(fixed))
    return fixed, progress


def isotropic(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Gaussian random directions, (W, N, 3)."""
    return torch.randn(x.shape, generator=rng, dtype=x.dtype, device=x.device)


def bounce(state: ECDState, mask: torch.Tensor, directions=isotropic) -> ECDState:
    """New random direction for pi where mask (W,) is set, same |pi|.

    ``directions(x, rng) -> (W, N, 3)`` draws the new directions: isotropic by
    default; the conformer search draws them among torsions.
    """
    if not bool(mask.any()):
        return state
    random = directions(state.x, state.rng) * state.movable
    norm = torch.sqrt(_wsum(state.p * state.p))
    p = torch.where(_bcast(mask, state.p), _unit(random) * _bcast(norm, state.p), state.p)
    return state.replace(p=p, bounces=state.bounces + mask.long())


def propose(state: ECDState, hp: ECDParams, directions=isotropic) -> ECDState:
    """Bounce where due (new directions from ``directions``), then kick pi and
    drift x by one step of dt.

    Returns the state with the new positions in ``x``; f and g still belong to
    the old positions until :func:`absorb` receives the new ones.
    """
    fixed, progress = bounce_due(state, hp)
    state = bounce(state, fixed | progress, directions)
    state = state.replace(
        since_fixed=torch.where(fixed, torch.zeros_like(state.since_fixed), state.since_fixed),
        fixed_done=state.fixed_done + fixed.long(),
        since_best=torch.where(fixed | progress, torch.zeros_like(state.since_best),
                               state.since_best))

    v = state.f - state.floor
    gv = _g(v, hp.eta)
    dgv = hp.eta * v ** (hp.eta - 1.0)          # dg/dV
    grad = state.g * state.movable
    p, dt, E = state.p, hp.dt, state.energy
    if hp.method == "bbi":
        p = p - 0.5 * dt * _bcast(dgv * (gv / E + E / gv), p) * grad
        velocity = _bcast(gv / E, p) * p
    elif hp.method == "ruthless":
        p2 = _wsum(p * p)
        p = p - dt * _bcast(dgv * (1.0 + 0.5 * p2), p) * grad
        velocity = _bcast(gv, p) * p
    else:
        p = p - dt * _bcast(dgv / gv, p) * grad
        p2 = _wsum(p * p)
        velocity = 2.0 * p / _bcast(1.0 + p2, p)
    dx = dt * velocity * state.movable
    # Cap the largest atomic displacement: a per-walker shorter drift, so a
    # walker near a steep wall cannot fly apart.
    longest = torch.linalg.vector_norm(dx, dim=-1).flatten(1).amax(1)
    scale = torch.clamp(hp.max_step / longest.clamp_min(1e-300), max=1.0)
    x = state.x + dx * _bcast(scale, dx)

    if hp.method == "sep" and hp.nu > 0:
        norm = torch.sqrt(_wsum(p * p))
        noise = torch.randn(p.shape, generator=state.rng, dtype=p.dtype, device=p.device)
        noisy = _unit(p) + hp.nu / math.sqrt(p[0].numel()) * noise * state.movable
        p = _unit(noisy) * _bcast(norm, p)
    return state.replace(x=x, p=p)


def absorb(state: ECDState, f, g, hp: ECDParams, x=None) -> ECDState:
    """Take the energies f (W,) and gradients g (W, N, 3) at ``state.x``.

    ``x`` replaces the proposed positions when the caller had to adjust them
    (ASE constraints). Then: lower the floor where V <= 0 (adaptive dV, keeping
    the momentum), restore exact energy conservation by rescaling |pi|, and
    update the record of the lowest F.
    """
    f = torch.as_tensor(f, dtype=state.x.dtype, device=state.x.device)
    g = torch.as_tensor(g, dtype=state.x.dtype, device=state.x.device)
    x = state.x if x is None else torch.as_tensor(x, dtype=state.x.dtype, device=state.x.device)
    p = state.p
    p2 = _wsum(p * p)

    below = f - state.floor <= 0
    floor = torch.where(below, f - hp.gap, state.floor)
    gv = _g(f - floor, hp.eta)
    if hp.method == "ruthless":
        # Its kick grows pi by a factor (1 + pi^2/2): re-basing E on the kicked
        # momentum at every floor drop feeds back and overflows within a few
        # steps down a steep slope. Keep the momentum of the previous point instead.
        p2_before = momentum_sq(hp.method, state.energy, _g(state.f - state.floor, hp.eta))
        energy = torch.where(below, hamiltonian(hp.method, gv, p2_before.clamp_min(0)),
                             state.energy)
    else:
        energy = torch.where(below, hamiltonian(hp.method, gv, p2), state.energy)

    if hp.conserve_energy:
        target = momentum_sq(hp.method, energy, gv)
        # A discrete step can land above the turning point (target < 0): the
        # walker stops there (pi = 0) and slides back; E is kept, never raised.
        target = target.clamp_min(0)
        has_p = p2 > 0
        factor = torch.where(has_p, torch.sqrt(target / p2.clamp_min(1e-300)),
                             torch.zeros_like(p2))
        p_from_rest = _unit(-g * state.movable) * _bcast(torch.sqrt(target), p)
        p = torch.where(_bcast(has_p, p), p * _bcast(factor, p), p_from_rest)

    improved = f < state.best_f
    wi = _bcast(improved, x)
    return state.replace(
        x=x, p=p, f=f, g=g, energy=energy, floor=floor,
        best_f=torch.where(improved, f, state.best_f),
        best_x=torch.where(wi, x, state.best_x),
        best_g=torch.where(wi, g, state.best_g),
        since_best=torch.where(improved, torch.zeros_like(state.since_best),
                               state.since_best + 1),
        since_fixed=state.since_fixed + 1,
        steps=state.steps + 1)


def step(state: ECDState, evaluate, hp: ECDParams) -> ECDState:
    """One ECD step of every walker; ``evaluate(x) -> (f (W,), g (W, N, 3))``."""
    state = propose(state, hp)
    f, g = evaluate(state.x)
    return absorb(state, f, g, hp)


def current_energy(state: ECDState, hp: ECDParams) -> torch.Tensor:
    """E recomputed from (V, pi) at the current state, for checks and logs."""
    gv = _g(state.f - state.floor, hp.eta)
    return hamiltonian(hp.method, gv, _wsum(state.p * state.p))


# --- the converging mode: batched L-BFGS -------------------------------------------

@dataclass(frozen=True)
class QuenchParams:
    """L-BFGS quench: memory m, max displacement per atom and step, and the
    initial inverse curvature 1/alpha (alpha in energy/length^2) used until the
    first curvature pair is known."""

    memory: int = 100
    max_step: float = 0.2
    alpha: float = 70.0
    # initial inverse Hessian P^-1: False (identity), True (the Exp preconditioner)
    # or a callable x -> solve, such as a BondedPreconditioner
    precon: object = False


@dataclass
class QuenchState:
    x: torch.Tensor        # (W, N, 3)
    f: torch.Tensor        # (W,)
    g: torch.Tensor        # (W, N, 3)
    s: torch.Tensor        # (W, m, 3N) position differences, newest last
    y: torch.Tensor        # (W, m, 3N) gradient differences
    x_prev: torch.Tensor   # (W, N, 3)
    g_prev: torch.Tensor   # (W, N, 3)
    f_prev: torch.Tensor   # (W,)
    steps: torch.Tensor    # (W,)

    def replace(self, **changes) -> "QuenchState":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name).tolist() for field in fields(self)}

    @classmethod
    def from_dict(cls, data: dict, dtype=torch.float64, device="cpu") -> "QuenchState":
        return cls(**{k: torch.tensor(v, dtype=torch.long if k == "steps" else dtype,
                                      device=device) for k, v in data.items()})


def quench_init(x, f, g, qp: QuenchParams = QuenchParams()) -> QuenchState:
    x = torch.as_tensor(x)
    f = torch.as_tensor(f, dtype=x.dtype, device=x.device)
    g = torch.as_tensor(g, dtype=x.dtype, device=x.device)
    W, D = x.shape[0], x[0].numel()
    hist = torch.zeros(W, qp.memory, D, dtype=x.dtype, device=x.device)
    return QuenchState(x=x.clone(), f=f.clone(), g=g.clone(), s=hist, y=hist.clone(),
                       x_prev=x.clone(), g_prev=g.clone(), f_prev=f.clone(),
                       steps=torch.zeros(W, dtype=torch.long, device=x.device))


def quench_propose(state: QuenchState, qp: QuenchParams = QuenchParams(),
                   active: torch.Tensor | None = None) -> QuenchState:
    """L-BFGS direction for every walker, capped at qp.max_step per atom.

    Empty history slots are zero and drop out, so walkers with different
    history lengths share one vectorized pass. ``active`` (W,) bool: only
    those walkers step (the others come back unchanged and cost nothing;
    the preconditioner and the L-BFGS products are per walker).
    """
    if active is not None and not bool(active.all()):
        rows = torch.nonzero(active).flatten()
        return put_rows(state, rows, quench_propose(take_rows(state, rows), qp)) if len(rows) else state
    W = state.x.shape[0]
    # H0 = gamma P^-1, gamma from the newest pair: soft collective motions
    # (torsions) get long steps, stiff bonds short ones
    solve = preconditioner_solver(qp.precon, state.x)
    dx = -inverse_hessian_apply(state.s, state.y, state.g.reshape(W, -1), 1.0 / qp.alpha,
                                solve).reshape(state.x.shape)
    # Not a descent direction (stale curvature): fall back to steepest descent.
    uphill = _wsum(dx * state.g) >= 0
    dx = torch.where(_bcast(uphill, dx), -state.g / qp.alpha, dx)
    longest = torch.linalg.vector_norm(dx, dim=-1).flatten(1).amax(1)
    scale = torch.clamp(qp.max_step / longest.clamp_min(1e-300), max=1.0)
    return state.replace(x_prev=state.x, g_prev=state.g, f_prev=state.f,
                         x=state.x + dx * _bcast(scale, dx))


def inverse_hessian_apply(s, y, v, fallback: float, precondition=None) -> torch.Tensor:
    """H v for each walker's L-BFGS inverse-Hessian model.

    s, y: (W, m, D) curvature pairs, newest last; rows with s.y <= 0 (zero:
    unused) take no part; v: (W, D). H0 = gamma P^-1 with gamma = s.y / y.P^-1 y
    of the newest pair, or ``fallback`` (length^2/energy) where there is none;
    ``precondition(u)`` applies P^-1 to u (W, k, D) (identity when None).
    Returns (W, D), the two-loop recursion's result, computed in the compact
    form of Byrd, Nocedal and Schnabel (Math. Prog. 63, 129, 1994, eq. 2.6):
    with R = upper triangle of S^T Y and D = its diagonal,
    H v = H0 v + S R^-T ((D + Y^T H0 Y) u - Y^T H0 v) - H0 Y u,  u = R^-1 S^T v,
    seven batched products and two triangular solves where the recursion takes
    2m sequential steps.
    """
    # Only (W, m, m) and (W, m) products are formed: the unused pairs are masked
    # there, and gamma scales them, so no copy of the (W, m, D) history is made.
    SY = s @ y.transpose(1, 2)                               # (W, m, m)
    sy = SY.diagonal(dim1=1, dim2=2)                         # (W, m)
    live = sy > 0
    both = (live[:, :, None] & live[:, None, :]).to(s.dtype)
    pv, py = (v, y) if precondition is None else (precondition(v[:, None])[:, 0], precondition(y))
    y_py = (y[:, -1] * py[:, -1]).sum(-1)
    have = live[:, -1] & (y_py > 0)
    gamma = torch.where(have, sy[:, -1] / y_py.clamp_min(1e-300), torch.full_like(y_py, fallback))
    g3 = gamma[:, None, None]
    # unused pairs get a unit diagonal: their rows decouple with u = 0
    R = torch.triu(SY * both) + torch.diag_embed((~live).to(s.dtype))
    u = torch.linalg.solve_triangular(R, (s @ v[..., None]) * live[..., None], upper=True)  # (W, m, 1)
    yhy = g3 * (y @ py.transpose(1, 2)) * both               # Y^T H0 Y
    middle = (torch.diag_embed(sy * live) + yhy) @ u - g3 * (py @ v[..., None]) * live[..., None]
    top = torch.linalg.solve_triangular(R.transpose(1, 2), middle, upper=False)
    return gamma[:, None] * (pv - (py.transpose(1, 2) @ u).squeeze(-1)) \
        + (s.transpose(1, 2) @ top).squeeze(-1)


def dihedral_angles(x: torch.Tensor, quads) -> torch.Tensor:
    """(..., Q) dihedral angles (radians, -pi..pi, IUPAC sign: clockwise seen
    along the middle bond is positive, as ASE and RDKit) of the atom
    quadruples ``quads`` (Q, 4) in the geometries x (..., N, 3); smooth enough
    for autograd at a zero-length middle bond."""
    q = torch.as_tensor(quads, device=x.device)
    b1 = x[..., q[:, 1], :] - x[..., q[:, 0], :]
    b2 = x[..., q[:, 2], :] - x[..., q[:, 1], :]
    b3 = x[..., q[:, 3], :] - x[..., q[:, 2], :]
    n1, n2 = torch.cross(b1, b2, dim=-1), torch.cross(b2, b3, dim=-1)
    m1 = torch.cross(b2 / torch.sqrt((b2 * b2).sum(-1, keepdim=True) + 1e-20), n1, dim=-1)
    return torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1) + 1e-20)


def rigid_free(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """d (W, N, 3) without its components along the rigid translations and
    rotations of the geometries x (W, N, 3)."""
    W, N, _ = x.shape
    c = x - x.mean(1, keepdim=True)
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    translations = eye.expand(W, N, 3, 3).permute(0, 3, 1, 2)            # (W, 3, N, 3)
    rotations = torch.cross(eye[None, :, None, :].expand(W, 3, N, 3),
                            c[:, None].expand(W, 3, N, 3), dim=-1)        # (W, 3, N, 3)
    basis = torch.cat([translations, rotations], 1).reshape(W, 6, -1).transpose(1, 2)
    # (W, 3N, 6); a linear molecule has a null rotation: R's diagonal shows it
    Q, R = torch.linalg.qr(basis)
    live = (R.diagonal(dim1=-2, dim2=-1).abs() > 1e-8).to(x.dtype)        # (W, 6)
    flat = d.reshape(W, -1)
    coeff = (Q * flat[:, :, None]).sum(1) * live
    return (flat - (Q * coeff[:, None, :]).sum(-1)).reshape(d.shape)


def soft_directions(s, y, power: int = 3, fallback: float = 1.0, precon=False):
    """A ``directions(x, rng)`` for :func:`bounce` that favours soft modes.

    Gaussian random directions, rigid motions removed, multiplied ``power``
    times by the L-BFGS inverse-Hessian model (s, y) (W, m, 3N) of a nearby
    minimum, so a component along a mode of curvature k grows as k^-power.
    Walkers with no pairs get the isotropic direction (less rigid motions).
    ``precon``: the model's H0 is gamma P^-1 with the quench's preconditioner
    P (see QuenchParams.precon). No force calls.
    """
    def draw(x, rng):
        d = rigid_free(x, isotropic(x, rng))
        W = x.shape[0]
        solve = preconditioner_solver(precon, x)
        for _ in range(power):
            d = _unit(d)
            d = rigid_free(x, inverse_hessian_apply(s, y, d.reshape(W, -1), fallback,
                                                    solve).reshape(x.shape))
        return d
    return draw


def surface_directions(directions, probability: float, reach: float = 1.3):
    """A ``directions(x, rng)`` that, for each walker with probability
    ``probability``, puts the whole push on one of its least-coordinated atoms
    (neighbours closer than ``reach`` x the shortest interatomic distance),
    along a random direction tangent to the cluster there (the component along
    the atom's offset from the centroid removed), rigid motions removed; the
    other walkers draw with ``directions``. The atom rolls over the surface into
    another site: the move by which a cluster's low minima often differ, where
    a soft collective mode only shakes the whole cluster. No force calls.
    """
    def draw(x, rng):
        d = directions(x, rng)
        W, N, _ = x.shape
        chosen = torch.rand(W, generator=rng, dtype=x.dtype, device=x.device) < probability
        if not bool(chosen.any()):
            return d
        dist = torch.cdist(x, x) + torch.diag(torch.full((N,), math.inf, dtype=x.dtype,
                                                         device=x.device))
        shortest = dist.flatten(1).amin(1)
        coordination = (dist < reach * shortest[:, None, None]).sum(-1)          # (W, N)
        least = (coordination == coordination.amin(1, keepdim=True)).to(x.dtype)
        atom = torch.multinomial(least, 1, generator=rng).squeeze(1)              # (W,)
        rows = torch.arange(W, device=x.device)
        radial = _unit(x[rows, atom] - x.mean(1))                                 # (W, 3)
        v = torch.randn(W, 3, generator=rng, dtype=x.dtype, device=x.device)
        v = v - (v * radial).sum(-1, keepdim=True) * radial
        push = torch.zeros_like(x)
        push[rows, atom] = v
        return torch.where(chosen[:, None, None], rigid_free(x, push), d)
    return draw


def avoiding(directions, avoid):
    """A ``directions(x, rng)`` that draws with ``directions`` and then removes
    from walker i's direction its components along ``avoid[i]``, a list of
    (N, 3) vectors (orthonormalised in order; an empty list leaves the
    direction as drawn). The conformer search uses it so that a kick from a
    minimum does not head again where earlier excursions from it went.
    """
    def draw(x, rng):
        d = directions(x, rng)
        for i, vectors in enumerate(avoid):
            basis = []
            for u in vectors:
                for b in basis:
                    u = u - (u * b).sum() * b
                if float(u.norm()) > 1e-6:
                    basis.append(u / u.norm())
            for b in basis:
                d[i] = d[i] - (d[i] * b).sum() * b
        return d
    return draw


def sparse_directions(weights: torch.Tensor, count: int = 2):
    """A ``directions(x, rng)`` for :func:`bounce` that puts the whole momentum
    on ``count`` coordinates per walker, drawn without replacement with
    probabilities proportional to ``weights`` (D,) over the flattened
    coordinates, with Gaussian components there; fewer where fewer weights are
    positive. The conformer search uses it in torsion space, so an excursion's
    energy goes into one or two torsions and crosses their barriers instead of
    spreading thinly over all of them.
    """
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.ndim != 1 or not bool((weights >= 0).all()) or not bool((weights > 0).any()):
        raise ValueError("sparse_directions needs non-negative weights, some positive")
    count = min(int(count), int((weights > 0).sum()))

    def draw(x, rng):
        W = x.shape[0]
        w = weights.to(x.dtype).expand(W, -1)
        pick = torch.multinomial(w, count, replacement=False, generator=rng)
        mask = torch.zeros(W, w.shape[1], dtype=x.dtype).scatter_(1, pick, 1.0)
        return isotropic(x, rng) * mask.to(x.device).reshape(x.shape)
    return draw


def hinge_directions(tangents, weights: torch.Tensor, signs=None):
    """A ``directions(x, rng)`` for :func:`bounce` in Cartesian space that
    pushes along one hinge per walker, drawn with probabilities proportional to
    ``weights`` (T,): ``tangents(x)`` (W, T, N, 3) says how the atoms move per
    radian of each hinge (``TorsionSpace.tangents``: turning a bond, flapping
    a ring corner), rigid motions removed, with the sign ``signs(x,
    tangents(x))`` (W, T) gives, or a random one where that is 0 or ``signs``
    is None. The conformer search uses it for molecules with puckered rings,
    whose pucker changes by a coherent motion that no rigid rotation gives:
    the push starts it, the Cartesian dynamics lets the ring follow. No force calls.
    """
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.ndim != 1 or not bool((weights >= 0).all()) or not bool((weights > 0).any()):
        raise ValueError("hinge_directions needs non-negative weights, some positive")

    def draw(x, rng):
        pick, sign = draw_hinges(weights, x.shape[0], rng, x.dtype, x.device)
        return hinge_push(x, tangents(x), pick, sign, signs)
    return draw


def draw_hinges(weights: torch.Tensor, W: int, rng, dtype=torch.float64, device=None):
    """(pick, sign), both (W,): one hinge per walker drawn with probabilities
    proportional to ``weights`` (T,), and a random sign +-1."""
    pick = torch.multinomial(weights.to(dtype).expand(W, -1), 1, generator=rng).squeeze(1)
    sign = torch.randn(W, generator=rng, dtype=dtype, device=device).sign()
    return pick, sign


def hinge_push(x, t, pick, sign, signs=None):
    """(W, N, 3) the rigid motion t[w, pick[w]] of hinge ``pick`` at x (W, N, 3)
    (``t``: (W, T, N, 3) tangents), rigid motions removed, the way
    ``signs(x, t)`` (W, T) says, or ``sign`` (W,) where that is 0 or ``signs`` None."""
    rows = torch.arange(x.shape[0], device=x.device)
    if signs is not None:
        preferred = signs(x, t)[rows, pick]
        sign = torch.where(preferred != 0, preferred, sign)
    return rigid_free(x, t[rows, pick] * sign[:, None, None])


def quench_preconditioner(choice, adjacency=None):
    """QuenchParams.precon for a choice: False (none), 'exp', or 'bonded' (a
    BondedPreconditioner of ``adjacency``, the (N, N) bond graph)."""
    if choice is False or choice is None:
        return False
    if choice == "exp":
        return True
    if choice == "bonded":
        if adjacency is None:
            raise ValueError("precon='bonded' needs a molecule's bonds; atomic clusters take 'exp'")
        return BondedPreconditioner(adjacency)
    raise ValueError(f"precon must be None, True, False, 'exp' or 'bonded', got {choice!r}")


def preconditioner_solver(precon, x: torch.Tensor):
    """u (W, k, 3N) -> P^-1 u for QuenchParams.precon at the geometries x
    (W, N, 3); None for no preconditioner."""
    if callable(precon):
        return precon(x)
    return exp_solver(x) if precon else None


class BondedPreconditioner:
    """A molecular model Hessian as preconditioner: P = B^T K B + mu I.

    B (M, 3N) is the Wilson B matrix of the primitive internal coordinates of
    the bond graph (every bond, bond angle and dihedral about a bond); K holds
    Lindh's force constants (Chem. Phys. Lett. 241, 423 (1995)) without
    their distance factors: 0.45 Ha/bohr^2 for stretches, 0.15 Ha/rad^2 for
    bends, 0.005 Ha/rad^2 for torsions, in eV and A. ``mu`` (eV/A^2) stands in
    for the couplings the graph leaves out (non-bonded contacts, rigid
    motions). Unlike Exp, which is isotropic per atom, it knows a bond is
    stiff along itself and soft across, so L-BFGS turns groups about bonds in
    long steps. Only the ratios matter: L-BFGS rescales H0 from its newest
    curvature pair.
    """

    STRETCH, BEND, TORSION = 0.45 * 27.211386 / 0.529177 ** 2, 0.15 * 27.211386, 0.005 * 27.211386

    def __init__(self, adjacency, mu: float = 0.3):
        adjacency = np.asarray(adjacency, bool)
        n = len(adjacency)
        bonds = [(i, j) for i in range(n) for j in range(i + 1, n) if adjacency[i, j]]
        angles = [(i, j, k) for j in range(n) for i in range(n) for k in range(i + 1, n)
                  if i != j and k != j and adjacency[i, j] and adjacency[j, k]]
        dihedrals = [(int(i), j, k, int(l)) for j, k in bonds
                     for i in np.flatnonzero(adjacency[j]) for l in np.flatnonzero(adjacency[k])
                     if i != k and l != j and i != l]
        self.bonds = torch.tensor(bonds, dtype=torch.long).reshape(-1, 2)
        self.angles = torch.tensor(angles, dtype=torch.long).reshape(-1, 3)
        self.dihedrals = torch.tensor(dihedrals, dtype=torch.long).reshape(-1, 4)
        self.force_constants = torch.cat([torch.full((len(bonds),), self.STRETCH),
                                          torch.full((len(angles),), self.BEND),
                                          torch.full((len(dihedrals),), self.TORSION)]).double()
        self.mu = float(mu)

    def internals(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (M,): bond lengths (A), then angles and dihedrals (rad), in
        the order of ``force_constants``; :meth:`wilson` is their derivative."""
        def norm(v):          # smooth at 0, so autograd gives no NaN at a linear angle
            return torch.sqrt((v * v).sum(-1) + 1e-20)
        b, a, d = (t.to(x.device) for t in (self.bonds, self.angles, self.dihedrals))
        lengths = norm(x[b[:, 1]] - x[b[:, 0]])
        u, v = x[a[:, 0]] - x[a[:, 1]], x[a[:, 2]] - x[a[:, 1]]
        angles = torch.atan2(norm(torch.cross(u, v, dim=-1)), (u * v).sum(-1))
        return torch.cat([lengths, angles, dihedral_angles(x, d)])

    def wilson(self, x: torch.Tensor) -> torch.Tensor:
        """B (W, M, N, 3): d internals / d x at the geometries x (W, N, 3), in
        closed form (Wilson; dihedrals as Blondel and Karplus, J. Comput. Chem.
        17, 1132 (1996)). Rows of angles within ~0.1 degree of linear, and of
        dihedrals over such an angle, are zero."""
        W, N = x.shape[:2]
        b, a, d = (t.to(x.device) for t in (self.bonds, self.angles, self.dihedrals))
        B = x.new_zeros(W, len(self.force_constants), N, 3)
        # stretches
        rows = torch.arange(len(b), device=x.device)
        u = x[:, b[:, 1]] - x[:, b[:, 0]]
        u = u / u.norm(dim=-1, keepdim=True)
        B[:, rows, b[:, 0]], B[:, rows, b[:, 1]] = -u, u
        # bends about the middle atom j of (i, j, k)
        rows = len(b) + torch.arange(len(a), device=x.device)
        e1, e2 = x[:, a[:, 0]] - x[:, a[:, 1]], x[:, a[:, 2]] - x[:, a[:, 1]]
        l1, l2 = e1.norm(dim=-1, keepdim=True), e2.norm(dim=-1, keepdim=True)
        e1, e2 = e1 / l1, e2 / l2
        cos = (e1 * e2).sum(-1, keepdim=True)
        sin = torch.sqrt((1 - cos * cos).clamp_min(0))
        live = (sin > 2e-3).to(x.dtype) / sin.clamp_min(2e-3)
        di, dk = (cos * e1 - e2) / l1 * live, (cos * e2 - e1) / l2 * live
        B[:, rows, a[:, 0]], B[:, rows, a[:, 2]], B[:, rows, a[:, 1]] = di, dk, -(di + dk)
        # torsions of (i, j, k, l): F = ri - rj, G = rj - rk, H = rl - rk
        rows = len(b) + len(a) + torch.arange(len(d), device=x.device)
        F, G, H = x[:, d[:, 0]] - x[:, d[:, 1]], x[:, d[:, 1]] - x[:, d[:, 2]], x[:, d[:, 3]] - x[:, d[:, 2]]
        A, C = torch.cross(F, G, dim=-1), torch.cross(H, G, dim=-1)
        g = G.norm(dim=-1, keepdim=True)
        a2, c2 = (A * A).sum(-1, keepdim=True), (C * C).sum(-1, keepdim=True)
        live = ((a2 > (2e-3 * g) ** 2 * (F * F).sum(-1, keepdim=True))
                & (c2 > (2e-3 * g) ** 2 * (H * H).sum(-1, keepdim=True))).to(x.dtype)
        A, C = A / a2.clamp_min(1e-30) * live, C / c2.clamp_min(1e-30) * live
        fg, hg = (F * G).sum(-1, keepdim=True) / g, (H * G).sum(-1, keepdim=True) / g
        B[:, rows, d[:, 0]] = g * A
        B[:, rows, d[:, 3]] = -g * C
        B[:, rows, d[:, 1]] = hg * C - g * A - fg * A
        B[:, rows, d[:, 2]] = g * C + fg * A - hg * C
        return B

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        """P (W, 3N, 3N) at the geometries x (W, N, 3), eV/A^2."""
        W, N = x.shape[:2]
        B = self.wilson(x).reshape(W, -1, 3 * N)
        k = self.force_constants.to(x)
        eye = torch.eye(3 * N, dtype=x.dtype, device=x.device)
        return B.transpose(1, 2) @ (k[None, :, None] * B) + self.mu * eye

    def __call__(self, x: torch.Tensor):
        LU, pivots = torch.linalg.lu_factor(self.matrix(x))    # once per geometry, reused by each solve

        def solve(v):        # (W, k, 3N)
            return torch.linalg.lu_solve(LU, pivots, v.transpose(1, 2)).transpose(1, 2)
        return solve


def exp_solver(x: torch.Tensor):
    """u (W, k, 3N) -> P^-1 u for the Exp preconditioner P of the geometries x
    (W, N, 3), acting on each Cartesian component."""
    W, N = x.shape[:2]
    LU, pivots = torch.linalg.lu_factor(exp_preconditioner(x))   # once per geometry

    def solve(v):
        k = v.shape[1]
        columns = v.reshape(W, k, N, 3).permute(0, 2, 1, 3).reshape(W, N, 3 * k)
        return torch.linalg.lu_solve(LU, pivots, columns).reshape(W, N, k, 3).permute(0, 2, 1, 3).reshape(W, k, -1)
    return solve


def exp_preconditioner(x: torch.Tensor, A: float = 3.0, c_stab: float = 0.1) -> torch.Tensor:
    """The 'Exp' preconditioner of Packwood et al. (J. Chem. Phys. 144, 164109)
    for positions (W, N, 3): a graph Laplacian (W, N, N) with pair weights
    exp(-A (r / r_nn - 1)) within 2 r_nn, r_nn the largest nearest-neighbour
    distance, plus c_stab on the diagonal; it acts on each Cartesian component."""
    d = torch.cdist(x, x)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    r_nn = (d + eye * 1e9).amin(-1).amax(-1)[:, None, None]
    w = torch.exp(-A * (d / r_nn - 1)) * (d < 2 * r_nn) * (1 - eye)
    return torch.diag_embed(w.sum(-1)) - w + c_stab * eye


def quench_observe(state: QuenchState, x, f, g) -> QuenchState:
    """Learn curvature from a point some other dynamics visited (an ECD step).

    The pair (x - state.x, g - state.g) joins the L-BFGS history where its
    curvature is positive, so a quench that follows ECD starts with the Hessian
    model the walker has already paid for. Going uphill is not penalized here.
    """
    x = torch.as_tensor(x, dtype=state.x.dtype, device=state.x.device)
    state = state.replace(x_prev=state.x, g_prev=state.g, f_prev=state.f, x=x)
    return _push_pair(state, f, g, x, clear_on_rise=False)


def quench_absorb(state: QuenchState, f, g, x=None) -> QuenchState:
    """Record the evaluation at the proposed x; push the curvature pair.

    A step that raised the energy clears that walker's history (the model of
    the curvature was wrong), as FIRE and ASE's BFGS restarts do.
    """
    x = state.x if x is None else torch.as_tensor(x, dtype=state.x.dtype, device=state.x.device)
    return _push_pair(state, f, g, x, clear_on_rise=True)


def _push_pair(state: QuenchState, f, g, x, clear_on_rise: bool) -> QuenchState:
    f = torch.as_tensor(f, dtype=x.dtype, device=x.device)
    g = torch.as_tensor(g, dtype=x.dtype, device=x.device)
    W = x.shape[0]
    s_new = (x - state.x_prev).reshape(W, 1, -1)
    y_new = (g - state.g_prev).reshape(W, 1, -1)
    good = ((s_new * y_new).sum(-1).squeeze(1) > 1e-12)
    s = torch.where(good[:, None, None], torch.cat([state.s[:, 1:], s_new], 1), state.s)
    y = torch.where(good[:, None, None], torch.cat([state.y[:, 1:], y_new], 1), state.y)
    rose = f > state.f_prev + 1e-12 * state.f_prev.abs().clamp_min(1.0)
    rose = rose & clear_on_rise
    s = torch.where(rose[:, None, None], torch.zeros_like(s), s)
    y = torch.where(rose[:, None, None], torch.zeros_like(y), y)
    return state.replace(x=x, f=f, g=g, s=s, y=y, steps=state.steps + 1)


def quench_until(state: QuenchState, evaluate, fmax: float, max_steps: int,
                 qp: QuenchParams = QuenchParams(), budget: int | None = None):
    """Batched L-BFGS until each walker's largest force is below fmax.

    Only unconverged walkers are evaluated (``evaluate(x (n, N, 3)) -> (f, g)``);
    stops early rather than evaluate more than ``budget`` geometries in all.
    Returns (state, converged (W,), evaluations per walker (W,)).
    """
    active = max_force(state.g) >= fmax
    used = torch.zeros(len(active), dtype=torch.long)
    for _ in range(max_steps):
        idx = torch.nonzero(active).flatten()
        if len(idx) == 0 or (budget is not None and int(used.sum()) + len(idx) > budget):
            break
        stepped = quench_propose(state, qp, active)
        f, g = stepped.f.clone(), stepped.g.clone()
        f[idx], g[idx] = evaluate(stepped.x[idx])
        used[idx] += 1
        state = where(active, quench_absorb(stepped, f, g), state)
        active = active & (max_force(state.g) >= fmax) & torch.isfinite(state.f)
    return state, ~active, used


def max_force(g: torch.Tensor) -> torch.Tensor:
    """Largest atomic force norm per walker, (W, N, 3) -> (W,)."""
    return torch.linalg.vector_norm(g, dim=-1).flatten(1).amax(1)


# --- masks over whole states ------------------------------------------------------------

def where(mask: torch.Tensor, a, b):
    """Per walker: the rows of state ``a`` where mask (W,) is set, else ``b``'s."""
    out = {}
    for field in fields(b):
        va, vb = getattr(a, field.name), getattr(b, field.name)
        if isinstance(vb, torch.Tensor):
            out[field.name] = torch.where(_bcast(mask, vb), va, vb)
    return dataclasses.replace(b, **out)


def take_rows(state, rows: torch.Tensor):
    """A state of the walkers ``rows`` (indices) of ``state``, in that order."""
    return dataclasses.replace(state, **{
        field.name: getattr(state, field.name)[rows] for field in fields(state)
        if isinstance(getattr(state, field.name), torch.Tensor)})


def put_rows(state, rows: torch.Tensor, other):
    """``state`` with walkers ``rows`` (indices) replaced by the walkers of ``other``
    (a state of len(rows) walkers)."""
    out = {}
    for field in fields(state):
        value = getattr(state, field.name)
        if isinstance(value, torch.Tensor):
            value = value.clone()
            value[rows] = getattr(other, field.name).to(value.dtype)
            out[field.name] = value
    return dataclasses.replace(state, **out)
