"""Storage error types.

Why a small hierarchy: callers (the CLI, pipeline steps, the trainer) need to tell "the data is
wrong" (IntegrityError: never retry, never use the files) apart from "the data is not there"
(NotFoundError) and from configuration mistakes (URIError), and every message names the URI,
key or file involved so that an operator can act on it without a traceback.
"""

from __future__ import annotations


class StorageError(Exception):
    """Any storage failure; the message names the URI, key or file."""


class URIError(StorageError, ValueError):
    """A malformed or unsupported URI, or an object key that cannot map to a local path."""


class NotFoundError(StorageError, FileNotFoundError):
    """The object, prefix, bucket or file does not exist."""


class IntegrityError(StorageError):
    """Bytes do not match what was expected (size or sha256): the data must not be used."""


class ManifestError(StorageError):
    """A manifest file is unreadable or malformed."""
