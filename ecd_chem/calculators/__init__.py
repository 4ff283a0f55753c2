"""Force providers: ANI (batched, native), PySCF, and any ASE calculator."""
from .ani import ANICalculator, ANIModel, ANIUnavailable
from .pyscf import PySCFCalculator, SCFNotConverged
from .base import ASELoopModel, BatchCalculator, BatchModel, Evaluator, as_batch_model
from ..structures import formal_charge

CALCULATORS = ("ani1x", "ani1ccx", "pyscf", "emt", "lj")


def make_calculator(name: str, atoms=None, *, method="b3lyp", basis="def2-svp", charge=None,
                    spin=0, device="auto"):
    """An ASE calculator by name (one of CALCULATORS). With ``atoms``, what the
    calculator cannot handle (an element outside ANI, a charged molecule for
    ANI, an impossible charge and spin) raises ValueError here, before any work.

    charge, spin: PySCF's total charge and 2S; charge None takes the net formal
    charge the structure was read with (SMILES, SDF), else 0.
    """
    if name != "pyscf" and (charge or spin):
        given = ", ".join(f"{key} {value}" for key, value in (("charge", charge), ("spin", spin))
                          if value)
        raise ValueError(f"charge and spin are PySCF settings; {name} takes neither (got {given})")
    if charge is None:
        charge = formal_charge(atoms) if atoms is not None else 0
    if name in ("ani1x", "ani1ccx"):
        calc = ANICalculator(name, device=device)
    elif name == "pyscf":
        calc = PySCFCalculator(method, basis, charge=charge, spin=spin)
    elif name == "emt":
        from ase.calculators.emt import EMT
        calc = EMT()
    elif name == "lj":
        from ..potentials import LennardJones
        calc = LennardJones()
    else:
        raise ValueError(f"unknown calculator {name!r}; choose one of {', '.join(CALCULATORS)}")
    if atoms is not None:
        check = getattr(calc, "check", None) or getattr(getattr(calc, "model", None), "check", None)
        if check:
            check(atoms)
    return calc


__all__ = ["CALCULATORS", "ANICalculator", "ANIModel", "ANIUnavailable", "ASELoopModel",
           "BatchCalculator", "BatchModel", "Evaluator", "PySCFCalculator", "SCFNotConverged",
           "as_batch_model", "make_calculator"]
