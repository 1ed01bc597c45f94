"""Errors a user can fix. The CLI prints these as one line and exits non-zero.

Anything else is a bug in ngram-dask and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, bad configuration or a refused operation: the message says what to fix."""

    exit_code = 2


class ConfigError(UserError):
    """An unknown key, a value of the wrong type, or an impossible combination."""


class BadInputError(UserError):
    """The input dataset is unreadable or violates the format (names shard and sample)."""


class DatabaseError(UserError):
    """The target database belongs to another tool, schema version or build."""


class WorkDirError(UserError):
    """The work dir holds results of another build, or cannot be written."""
