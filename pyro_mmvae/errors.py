"""The library's error classes for bad input, and small checks of scalar arguments.

Every entry point of the library (trainer, objectives, guides' ``posterior``, conditional generation,
metrics, subset posteriors, samplers, checkpoint and run-folder loading) raises one of these when its
input is wrong, with a message that names the culprit (modality, argument or file path) and says
what was expected and what was received:

- :class:`InputError` (a ``ValueError``): a value, shape or range is wrong;
- :class:`InputTypeError` (a ``TypeError``): a value has the wrong type (a numpy array where a tensor
  is needed, an integer image where floats are needed);
- :class:`UnknownModalityError` (an ``InputError`` and a ``KeyError``): a modality name is unknown or
  a needed one is missing;
- :class:`RunFolderError` (an ``InputError``): a run-folder file (``config.json``, ...) is corrupt or
  unreadable; the message names its path.

They subclass the built-in exceptions, so ``except ValueError`` / ``except TypeError`` /
``except KeyError`` keep working.
"""

from __future__ import annotations

import math
import operator


class PyroMMVAEError(Exception):
    """Base of the library's own errors."""


class InputError(PyroMMVAEError, ValueError):
    """A bad value, shape or range in the input of a library function."""


class InputTypeError(PyroMMVAEError, TypeError):
    """An input of the wrong type (e.g. a numpy array where a torch tensor is needed)."""


class UnknownModalityError(InputError, KeyError):
    """A modality name that is unknown, or a modality a component needs but the batch lacks."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class RunFolderError(InputError):
    """A run-folder file (``config.json``, a stage file, ...) is corrupt or unreadable; names its path."""


def check_int(value, name: str, minimum: int | None = None) -> int:
    """``int(value)`` for an integer ``value`` (``minimum`` inclusive); raises naming the argument ``name``.

    Integral floats (``3.0``) are accepted; booleans, other floats and non-numbers are not.
    """
    if isinstance(value, bool):
        raise InputTypeError(f"{name} must be an integer, got the bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            out = int(value)
        else:
            raise InputTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None
    if minimum is not None and out < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return out


def check_float(value, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    """``float(value)``, required finite (and ``> 0`` / ``>= 0`` when asked); raises naming ``name``."""
    if isinstance(value, bool):
        raise InputTypeError(f"{name} must be a number, got the bool {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})") from None
    if not math.isfinite(out):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if positive and not out > 0:
        raise InputError(f"{name} must be positive (> 0), got {value!r}")
    if nonnegative and not out >= 0:
        raise InputError(f"{name} must be non-negative (>= 0), got {value!r}")
    return out
