"""Pictures of a run (matplotlib, optional extra ``plot``).

* :func:`plot_search` -- energy of every walker against force calls, the lowest
  minimum found so far, and the ladder of the conformers kept.
* :func:`plot_optimization` -- energy and max force of one ECDOpt run against
  force calls, ECD and quench steps told apart.
"""
from __future__ import annotations

import numpy as np

from .structures import KCAL_PER_MOL


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'ecd-chem[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _units(kind):
    """(scale, label) turning eV into the axis unit."""
    if kind == "cluster":
        return 1.0, "energy above the lowest minimum (eV)"
    return 1 / KCAL_PER_MOL, "energy above the lowest minimum (kcal/mol)"


def plot_search(result, path, title: str = "") -> None:
    """Two panels: walkers' energies and the running lowest minimum against
    force calls (left), and the conformer energy ladder with ranks and
    Boltzmann populations (right). Energies relative to the best conformer."""
    plt = _pyplot()
    scale, label = _units(result.kind)
    e0 = result.best.info["energy"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8), width_ratios=(3, 1),
                                      layout="constrained")
    if result.trace:
        calls = np.array([c for c, _ in result.trace], float)
        energies = (np.array([e for _, e in result.trace], float) - e0) * scale
        finite = energies[np.isfinite(energies)]
        for w in range(energies.shape[1]):
            left.plot(calls, energies[:, w], lw=0.6, alpha=0.55, color=plt.cm.viridis(
                w / max(1, energies.shape[1] - 1)))
        top = np.percentile(finite, 98) if finite.size else 1.0
        left.set_ylim(min(-0.05 * top, finite.min() if finite.size else 0), 1.05 * top)
    if result.history:
        calls = [c for c, _ in result.history] + [result.force_calls]
        lows = [(e - e0) * scale for _, e in result.history]
        left.step(calls, lows + lows[-1:], where="post", color="black", lw=2,
                  label="lowest minimum so far")
        left.legend(loc="upper right", frameon=False)
    left.set_xlabel("force calls (all walkers)")
    left.set_ylabel(label)
    left.set_title(f"{len(result.trace[0][1]) if result.trace else ''} walkers: "
                   f"{result.ecd_calls} ECD + {result.quench_calls} quench + "
                   f"{result.refine_calls} refine calls", fontsize=10)
    left.grid(alpha=0.3)

    rel = [(c.info["energy"] - e0) * scale for c in result.conformers]
    for c, e in zip(result.conformers, rel):
        right.hlines(e, 0, 1, color="tab:blue", lw=2)
        if len(rel) <= 25:
            right.text(1.05, e, f"{c.info['rank']}  ({100 * c.info['boltzmann_weight']:.0f}%)",
                       va="center", fontsize=8)
    right.set_xlim(0, 1.6)
    span = max(rel) if rel and max(rel) > 0 else 1.0
    right.set_ylim(-0.05 * span, 1.08 * span)
    right.set_xticks([])
    right.set_ylabel(label)
    right.set_title(f"{len(rel)} conformers (rank, population)", fontsize=10)
    right.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_optimization(records, path, title: str = "") -> None:
    """records: (force_calls, energy eV, max force eV/A, 'ecd' | 'quench' | 'start')
    per evaluation. Energy relative to the last, and max|F| on a log axis."""
    plt = _pyplot()
    calls = np.array([r[0] for r in records], float)
    energy = np.array([r[1] for r in records], float)
    fmax = np.array([r[2] for r in records], float)
    phase = np.array([r[3] for r in records])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, layout="constrained")
    rel = energy - energy[-1]
    top.plot(calls, rel, color="0.6", lw=1)
    bottom.semilogy(calls, fmax, color="0.6", lw=1)
    for name, color in (("start", "black"), ("ecd", "tab:orange"), ("quench", "tab:blue")):
        sel = phase == name
        if sel.any():
            label = {"start": "start", "ecd": "ECD step", "quench": "L-BFGS quench"}[name]
            top.plot(calls[sel], rel[sel], "o", ms=3.5, color=color, label=label)
            bottom.semilogy(calls[sel], fmax[sel], "o", ms=3.5, color=color)
    top.set_yscale("symlog", linthresh=1e-3)
    top.set_ylabel("E - E(final) (eV)")
    top.legend(frameon=False)
    bottom.set_ylabel("max |F| (eV/A)")
    bottom.set_xlabel("force calls")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if title:
        top.set_title(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
