"""Exceptions for user errors: the CLI prints their message, never a traceback."""
from __future__ import annotations


class NagIndexError(Exception):
    """A user-facing error (bad input, incompatible index, unknown name)."""


class InputError(NagIndexError):
    """A bad input record or file, with its location in the message."""


class IndexMismatchError(NagIndexError):
    """An index was built with settings other than the ones requested."""
