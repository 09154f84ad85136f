"""Exceptions raised by :mod:`fedwon.datasets`.

Every data problem a user can cause (a bad spec, a missing file, a malformed array, a refused
pickle) is reported as a :class:`DataError` with a one-line message that names what is wrong and
what would be valid.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data set, its files or a data request is invalid."""


class UnsafePickleError(DataError):
    """A pickle tried to load something other than numpy arrays and plain builtins."""


class PartitionIdError(DataError, IndexError):
    """A client (partition) id outside ``range(num_clients)``."""
