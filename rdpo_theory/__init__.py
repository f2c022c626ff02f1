"""rdpo-theory: exact solvers, scalable algorithms and studies for distributionally robust DPO.

Heavy pieces (torch, cvxpy programs, studies) live in submodules and are imported on demand.
"""

from .data import PreferenceData
from .errors import InputError, NonFiniteError, RDPOError, SolverError
from .worlds import World

__version__ = "0.1.0"
__all__ = [
    "InputError",
    "NonFiniteError",
    "PreferenceData",
    "RDPOError",
    "SolverError",
    "World",
    "__version__",
]
