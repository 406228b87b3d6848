"""Errors scnet raises on bad input: each names the problem and the way out.

The CLI prints these without a traceback; Python callers can catch ``ScnetError`` for all of them. Each is also
the built-in exception a Python caller would expect for that mistake (``ValueError``, ``TypeError``), so
``except ValueError`` keeps working.
"""

__all__ = ['ScnetError', 'UnknownModelError', 'CheckpointError', 'InvalidArgumentError',
           'InvalidArgumentTypeError', 'SingleValueBatchError', 'is_single_value_batch']


class ScnetError(Exception):
    """Base class of the errors scnet raises for invalid input."""


class UnknownModelError(ScnetError, ValueError):
    """A model name that is not in the zoo."""


class CheckpointError(ScnetError, ValueError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class InvalidArgumentError(ScnetError, ValueError):
    """An argument (of ``SCConv2d``, ``convert``, ``create_model``, ...) or an input tensor with a value scnet
    cannot take, caught before torch fails on it somewhere deeper with a message about internals."""


class InvalidArgumentTypeError(ScnetError, TypeError):
    """An argument of the wrong type (a string where a module or a number belongs, ...)."""


class SingleValueBatchError(InvalidArgumentError):
    """Batch statistics over a single value per channel (a batch of one image whose map, or pooled context, is
    1x1, in training): ``SCConv2d`` raises it where torch's own ``ValueError`` would name neither the layer nor a
    way out, and the commands translate it into their own flag (``--batch-size``, ``--samples``)."""


def is_single_value_batch(error: BaseException) -> bool:
    """True for the error of batch norm on one value per channel: ``SCConv2d``'s, or torch's own (a plain layer
    on a 1x1 map)."""
    return isinstance(error, SingleValueBatchError) or (
        isinstance(error, ValueError) and 'more than 1 value per channel' in str(error))
