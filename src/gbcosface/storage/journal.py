"""The stager's journal: which files in a staging directory were fetched and verified, and from what.

Why a journal: resuming a stage of a large dataset must not re-download (or re-hash) the files that
an interrupted run already finished. Each line is appended only after a file was verified and
renamed into place, so a record means "this path held these bytes when it was written". A later
run trusts a record only while the file's size and mtime and the source object's fingerprint
(ETag or size+mtime) are unchanged; anything else is fetched again. A torn last line (the process
was killed while appending) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from gbcosface.storage.manifest import atomic_write_bytes


@dataclass(frozen=True)
class JournalRecord:
    key: str
    size: int
    sha256: str
    etag: str | None
    version_id: str | None
    fingerprint: str
    mtime_ns: int


class StagingJournal:
    """Append-only JSON-lines records, one per verified file; thread-safe appends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, JournalRecord]:
        records: dict[str, JournalRecord] = {}
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return records
        for line in lines:
            try:
                rec = JournalRecord(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a torn or foreign line: never trusted
            records[rec.key] = rec
        return records

    def append(self, record: JournalRecord) -> None:
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)
            f.flush()

    def rewrite(self, records: list[JournalRecord]) -> None:
        """Replace the journal with exactly `records` (drops superseded lines)."""
        text = "".join(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            atomic_write_bytes(self.path, text.encode())

    @staticmethod
    def matches(record: JournalRecord | None, path: Path, fingerprint: str) -> bool:
        """Whether `record` still describes the file at `path` fetched from an object with `fingerprint`."""
        if record is None or record.fingerprint != fingerprint:
            return False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        return st.st_size == record.size and st.st_mtime_ns == record.mtime_ns
