"""Force providers: ANI (batched, native), PySCF, and any ASE calculator."""
from .ani import ANICalculator, ANIModel, ANIUnavailable
from .pyscf import PySCFCalculator, SCFNotConverged
from .base import ASELoopModel, BatchCalculator, BatchModel, Evaluator, as_batch_model

__all__ = ["ANICalculator", "ANIModel", "ANIUnavailable", "ASELoopModel", "BatchCalculator", "BatchModel",
           "Evaluator", "PySCFCalculator", "SCFNotConverged", "as_batch_model"]
