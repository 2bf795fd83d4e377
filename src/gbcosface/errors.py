"""What a person sees when a command fails: one line naming the thing, and an exit code per class.

Why one table: each area raises its own typed error (ConfigError, DataFormatError, StorageError, ...)
whose message already names the file, line, key or URI. The CLI catches them at the top, prints
`error: MESSAGE` on one line (the traceback only with `-v`) and exits with the code of the class, so
scripts and pipelines can tell "fix your config" from "the data is bad" from "the store is down".
Classes are matched by module and name along the MRO, so this module imports nothing heavy.
docs/architecture.md ("Errors and exit codes") shows the same table.
"""

from __future__ import annotations

import os
import re

EXIT_UNEXPECTED = 1  # a bug: the traceback is printed
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_CONFIG = 3
EXIT_DATA = 4
EXIT_STORAGE = 5
EXIT_FILE = 6
EXIT_JOB = 7
EXIT_TRAINING = 8
EXIT_INTERRUPTED = 130

#: (module, class name) -> exit code; subclasses inherit their base's code.
EXIT_CODES: dict[tuple[str, str], int] = {
    ("gbcosface.config", "ConfigError"): EXIT_CONFIG,
    ("gbcosface.yaml_safe", "YAMLInputError"): EXIT_CONFIG,
    ("gbcosface.launch.profile", "ProfileError"): EXIT_CONFIG,
    ("gbcosface.launch.validate", "JobValidationError"): EXIT_CONFIG,
    ("gbcosface.launch.spec", "JobSpecError"): EXIT_CONFIG,
    ("gbcosface.train.checkpoint", "CheckpointConfigError"): EXIT_CONFIG,
    ("gbcosface.data.errors", "DataFormatError"): EXIT_DATA,
    ("gbcosface.data.bin_sets", "UnsafePickleError"): EXIT_DATA,
    ("gbcosface.models.io", "BackboneLoadError"): EXIT_DATA,
    ("gbcosface.eval.ijb", "UnknownTemplateError"): EXIT_DATA,
    ("gbcosface.storage.errors", "StorageError"): EXIT_STORAGE,
    ("builtins", "OSError"): EXIT_FILE,
    ("gbcosface.launch.client", "JobError"): EXIT_JOB,
    ("gbcosface.launch.containers", "ContainerError"): EXIT_JOB,
    ("gbcosface.train.checkpoint", "CheckpointError"): EXIT_TRAINING,
    ("gbcosface.train.trainer", "NonFiniteLossError"): EXIT_TRAINING,
    ("gbcosface.eval.export", "ExportParityError"): EXIT_TRAINING,
}

#: The longest message printed; the rest is counted, not echoed (a 6 MB bad line must not flood a log).
MAX_MESSAGE_CHARS = 2000


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of a known error class, or None for an unexpected error (a bug)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    for cls in type(exc).__mro__:
        code = EXIT_CODES.get((cls.__module__, cls.__name__))
        if code is not None:
            return code
    return None


def one_line(exc: BaseException) -> str:
    """The error's message on one line: newlines joined with '; ', at most MAX_MESSAGE_CHARS characters."""
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith(str(exc.filename or "\0")):
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        if exc.filename2:
            text += f" (-> {exc.filename2})"
    else:
        text = str(exc) or type(exc).__name__
    text = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(text) > MAX_MESSAGE_CHARS:
        text = f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS:,} more characters)"
    return text


def clip(text: str, limit: int = 120) -> str:
    """`text` for an error message: repr-quoted and cut to `limit` characters (a bad line may be megabytes)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


# -- secrets in logs --------------------------------------------------------------------------------------

#: Environment variables whose values must never reach a log line.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
)
# Header and query values that carry credentials in botocore / urllib3 debug output.
_SECRET_PATTERNS = (
    re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*['\"]?(?:b')?)[^'\",\s}]+"),
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:b')?)[^'\"}]+"),
    re.compile(r"(?i)(x-amz-credential=)[^&\s'\"]+"),
    re.compile(r"(?i)(x-amz-signature=)[^&\s'\"]+"),
    re.compile(r"(?i)(aws_secret_access_key['\"]?\s*[:=]\s*['\"]?)[^'\",\s}]+"),
)
REDACTED = "[REDACTED]"


def redact(text: str, environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """`text` with the values of SECRET_ENV_VARS and credential headers replaced by [REDACTED]."""
    env = os.environ if environ is None else environ
    for name in SECRET_ENV_VARS:
        value = env.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text
