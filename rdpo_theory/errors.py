"""Typed exceptions of rdpo-theory.

``InputError`` subclasses :class:`ValueError`, so ``except ValueError`` keeps working for
callers that do not know this package.
"""

from __future__ import annotations


class RDPOError(Exception):
    """Base class of every exception raised on purpose by rdpo-theory."""


class InputError(RDPOError, ValueError):
    """An argument is malformed: wrong shape, NaN/inf, out of range. The message names it."""


class SolverError(RDPOError):
    """A solver ended without a certified-accurate answer.

    Attributes
    ----------
    status : str
        The solver's own status string (e.g. ``"optimal_inaccurate"``, ``"infeasible"``).
    hint : str
        What to try next.
    """

    def __init__(self, message: str, *, status: str = "unknown", hint: str = ""):
        self.status = status
        self.hint = hint
        full = message if not hint else f"{message} Hint: {hint}"
        super().__init__(full)


class NonFiniteError(RDPOError, ArithmeticError):
    """A computation produced NaN or inf where a finite value is required (a training step's
    loss or gradient norm, a model about to be saved).

    Attributes
    ----------
    step : int or None
        The optimizer step (1-based) at which it happened, if in a training loop.
    quantity : str
        The first non-finite quantity found (e.g. ``"loss"``, ``"grad_norm"``,
        ``"reference_chosen_logps"``, a parameter name).
    """

    def __init__(self, message: str, *, step: int | None = None, quantity: str = ""):
        self.step = step
        self.quantity = quantity
        super().__init__(message)


class FileFormatError(InputError):
    """A file cannot be read as the expected format. The message names the file, the line
    (1-based) or column where it applies, what was expected and what was found.

    Attributes
    ----------
    path : str
    line : int or None
    column : str or None
    """

    def __init__(
        self, message: str, *, path: str = "", line: int | None = None, column: str | None = None
    ):
        self.path = path
        self.line = line
        self.column = column
        super().__init__(message)
