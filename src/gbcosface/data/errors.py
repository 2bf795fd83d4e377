"""Errors raised by the data readers.

Why one class: callers (the CLI, the trainer, the pipeline steps) catch a single type and show its
message, which always names the file and the record key or line that is wrong.
"""

from __future__ import annotations


class DataFormatError(ValueError):
    """Malformed or unreadable data; the message names the file and the record key or line."""
