"""ecd_chem: Energy-Conserving Descent for molecules and clusters, on ASE."""
from .optimizer import ECDOpt
from .search import ConformerSearch, SearchResult

__all__ = ["ConformerSearch", "ECDOpt", "SearchResult"]
__version__ = "0.1.0"
