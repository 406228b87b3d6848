"""Errors scnet raises on bad input: each names the problem and the way out.

The CLI prints these without a traceback; Python callers can catch ``ScnetError`` for all of them.
"""

__all__ = ['ScnetError', 'UnknownModelError', 'CheckpointError']


class ScnetError(Exception):
    """Base class of the errors scnet raises for invalid input."""


class UnknownModelError(ScnetError, ValueError):
    """A model name that is not in the zoo."""


class CheckpointError(ScnetError, ValueError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""
