"""Force providers: ANI (batched, native), PySCF, and any ASE calculator."""
from .ani import ANICalculator, ANIModel
from .base import ASELoopModel, BatchCalculator, BatchModel, Evaluator, as_batch_model

__all__ = ["ANICalculator", "ANIModel", "ASELoopModel", "BatchCalculator", "BatchModel",
           "Evaluator", "as_batch_model"]
