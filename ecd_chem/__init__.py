"""ecd_chem: Energy-Conserving Descent for molecules and clusters, on ASE."""
from .optimizer import ECDOpt

__all__ = ["ECDOpt"]
__version__ = "0.1.0"
