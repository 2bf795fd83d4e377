"""A readable console for a local pipeline run: one line per step, training progress, the log file's path.

Why: KFP's local runner prints every step's executor input (a JSON document), its streamed output
and its outputs, so a person watching `make demo` drowned in machine output (236 of 715 lines were
executor JSON). `StepConsole` stands in for stdout while the run goes: everything is written to a
log file, and the terminal gets
- one line per finished step: its name, status and duration;
- the training progress lines (rank 0's `step N/M ...`), shortened;
- warnings and errors, and on a failed step the tail of the log and where the log is.

KFP's local orchestrator also logs through the root logger (`logging.info("Skipping conditional
task ...")`, "Applying expression selector ..." for every ParallelFor item, "Cleaned up workspace"),
whose handler was made before the block and writes to the real terminal; for the block, records
from KFP's own files go into the console (so into the log file) instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '(?P<task>[^']+)'")
_END = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")
_PIPELINE_END = re.compile(r"Pipeline '(?P<name>[^']+)' finished with status (?P<status>[A-Z]+)")
# `[master-0] 2026-.. INFO gbcosface.train: step 40/600 epoch 1 | ...`: only rank 0 writes these.
_PROGRESS = re.compile(r"\[(?P<replica>[\w-]+)\].*?gbcosface\.train: (?P<text>step \d+/\d+ .*)$")
_LOSS = re.compile(r"\bloss=(?P<loss>[-+\d.eE]+|nan|inf)")
_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|Traceback \(most recent call last\))")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def short_progress(text: str) -> str:
    """`step N/M epoch E | X samples/s | eta T | loss=L` of the trainer's full progress line."""
    parts = [p.strip() for p in text.split("|")]
    keep = [p for p in parts if p.startswith(("step ", "eta ")) or p.endswith("samples/s")]
    if m := _LOSS.search(text):
        keep.append(f"loss={m['loss']}")
    return " | ".join(keep) if keep else text


class StepConsole(io.TextIOBase):
    """A text stream: every line goes to `log`; the lines a person needs go to `terminal`."""

    def __init__(self, log: IO[str], terminal: IO[str], log_path: Path | None = None, tail: int = 40):
        self._log, self._term, self.log_path = log, terminal, log_path
        self._buf = ""
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._recent: deque[str] = deque(maxlen=tail)
        self.steps: list[tuple[str, str, float]] = []  # (task, status, seconds) in finishing order

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._log.write(text)
            self._buf += text
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                self._line(strip_ansi(line))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._log.flush()
            self._term.flush()

    def _say(self, text: str) -> None:
        self._term.write(text + "\n")
        self._term.flush()

    def _line(self, line: str) -> None:
        self._recent.append(line)
        if m := _START.search(line):
            self._started[m["task"]] = time.monotonic()
        elif m := _END.search(line):
            took = max(0.0, time.monotonic() - self._started.pop(m["task"], time.monotonic()))
            self.steps.append((m["task"], m["status"], took))
            self._say(f"  {m['task']:<22} {m['status']:<8} {took:7.1f} s")
            if m["status"] != "SUCCESS":
                self._say_tail()
        elif m := _PIPELINE_END.search(line):
            self._say(f"  pipeline {m['name']}: {m['status']}")
        elif m := _PROGRESS.search(line):
            self._say(f"      train {short_progress(m['text'])}")
        elif _PROBLEM.search(line):
            self._say(f"  ! {line.strip()}")

    def _say_tail(self) -> None:
        self._say("  --- last lines of the log ---")
        for line in list(self._recent)[:-1]:
            self._say(f"  | {line}")
        if self.log_path is not None:
            self._say(f"  full log: {self.log_path}")


def _kfp_dirs() -> tuple[str, ...]:
    """KFP's package directories, as its modules' `__file__` (a record's `pathname`) spells them and resolved,
    so the per-record check is a string prefix test with no filesystem call."""
    spec = importlib.util.find_spec("kfp")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return tuple({os.path.join(form, "") for loc in locations for form in (loc, os.path.realpath(loc))})


class _FromKfp(logging.Filter):
    """Passes (or, with `keep=False`, drops) the records logged from KFP's own source files."""

    def __init__(self, dirs: tuple[str, ...], keep: bool) -> None:
        super().__init__()
        self._dirs, self._keep = dirs, keep

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.pathname or "").startswith(self._dirs) == self._keep


@contextlib.contextmanager
def _kfp_logs_into(console: StepConsole) -> Iterator[None]:
    """For the block, root-logger records from KFP's files go to `console`, not the root's handlers."""
    dirs = _kfp_dirs()
    if not dirs:
        yield
        return
    root = logging.getLogger()
    drop = _FromKfp(dirs, keep=False)
    handlers = list(root.handlers)
    into = logging.StreamHandler(console)
    into.addFilter(_FromKfp(dirs, keep=True))
    into.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for handler in handlers:
        handler.addFilter(drop)
    root.addHandler(into)
    try:
        yield
    finally:
        root.removeHandler(into)
        for handler in handlers:
            handler.removeFilter(drop)


@contextlib.contextmanager
def step_console(log_path: str | Path, quiet: bool = True) -> Iterator[StepConsole | None]:
    """Route stdout and stderr through a StepConsole (and into `log_path`) for the block.

    `quiet=False` leaves the streams alone (everything on the terminal, as KFP prints it).
    """
    if not quiet:
        yield None
        return
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        console = StepConsole(log, sys.__stdout__ if sys.stdout is None else sys.stdout, path)
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console), _kfp_logs_into(console):
            try:
                yield console
            finally:
                console.write("\n")
                console.flush()
