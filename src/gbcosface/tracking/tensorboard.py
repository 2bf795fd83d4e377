"""TensorBoard event files under the run's output (`<run.output>/tensorboard/`), no server needed.

Why event files: `tensorboard --logdir s3://BUCKET/.../runs/RUN_ID/train/tensorboard` reads them where
the run was published, and they carry the same scalars as MLflow. Written with torch's SummaryWriter
(the `tensorboard` package, the `tracking` extra), whose own thread does the file writes; for an
s3:// output the files are written to a local directory and uploaded by a second thread (on
`flush()`, and at `close()` with a bounded wait), so no S3 request is ever on a training step's path.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from gbcosface.storage import join_uri, parse_uri, put_bytes

log = logging.getLogger("gbcosface.tracking")

SUBDIR = "tensorboard"


class TensorBoardLog:
    def __init__(self, output_uri: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.uri = join_uri(output_uri, SUBDIR)
        self.is_s3 = parse_uri(output_uri).is_s3
        self._tmp = tempfile.TemporaryDirectory(prefix="gbcosface-tb-") if self.is_s3 else None
        self.local_dir = Path(self._tmp.name) if self._tmp else Path(self.uri)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.local_dir), flush_secs=30)
        self._uploaded: dict[str, int] = {}
        self._upload_lock = threading.Lock()
        self._uploader: threading.Thread | None = None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), global_step=int(step))

    def flush(self) -> None:
        """Write buffered events; for S3, start an upload in the background unless one is running."""
        self.writer.flush()
        if self.is_s3 and (self._uploader is None or not self._uploader.is_alive()):
            self._uploader = threading.Thread(target=self._upload, name="gbcosface-tb-upload", daemon=True)
            self._uploader.start()

    def _upload(self) -> None:
        with self._upload_lock:
            try:
                for path in sorted(self.local_dir.rglob("*")):
                    if not path.is_file():
                        continue
                    size = path.stat().st_size
                    rel = path.relative_to(self.local_dir).as_posix()
                    if self._uploaded.get(rel) == size:
                        continue
                    put_bytes(join_uri(self.uri, rel), path.read_bytes())
                    self._uploaded[rel] = size
            except Exception as exc:  # noqa: BLE001 - event files are a convenience, never a failure
                log.warning("TensorBoard event upload to %s failed (%s); retried at the next flush", self.uri, exc)

    def close(self, timeout_s: float = 30.0) -> None:
        self.writer.close()
        if self.is_s3:
            if self._uploader is not None:
                self._uploader.join(timeout_s)
            final = threading.Thread(target=self._upload, name="gbcosface-tb-upload", daemon=True)
            final.start()
            final.join(timeout_s)
            if final.is_alive():
                log.warning("TensorBoard event upload to %s did not finish within %.0f s", self.uri, timeout_s)
            elif self._tmp is not None:
                self._tmp.cleanup()
