"""NVML sampler: GPU utilisation and memory of this process's device, every few seconds.

Why in the trainer when clusters run dcgm-exporter: the demo, a laptop or a cluster without DCGM
still get per-rank GPU figures, and the per-process series carry the rank labels that make a
dashboard "GPU utilisation per rank" trivial. Where dcgm-exporter runs, the alerts prefer it.

Why a background thread: NVML calls take ~1 ms but must not sit in the training step, and
sampling at a fixed cadence keeps the figures independent of the step length.

Why absent NVML is silent: CPU machines (CI, the demo) have no driver; that is a normal
configuration, reported once at debug level, never an error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    """One reading; a field is None where the device does not report it (e.g. MIG utilisation)."""

    index: int  # the CUDA index as the process sees it (LOCAL_RANK), not the physical one
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    timestamp: float


def visible_device(cuda_index: int, env: Mapping[str, str]) -> int | str:
    """The NVML handle key for CUDA device ``cuda_index``: a physical index or a GPU/MIG UUID.

    Why: NVML ignores CUDA_VISIBLE_DEVICES and numbers all GPUs of the host, so with
    ``CUDA_VISIBLE_DEVICES=2,3`` the process's cuda:0 is NVML device 2.
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return cuda_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if cuda_index >= len(entries):
        raise ValueError(f"CUDA device {cuda_index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    entry = entries[cuda_index]
    return int(entry) if entry.isdigit() else entry


def _load_pynvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlSampler:
    """Samples one device in a daemon thread; does nothing where NVML is missing or fails.

    ``nvml`` may be any module with pynvml's API (tests pass a fake one); ``on_sample`` is called
    from the sampler thread with each :class:`GpuSample`.
    """

    def __init__(
        self,
        cuda_index: int,
        interval_s: float = 5.0,
        on_sample: Callable[[GpuSample], None] | None = None,
        *,
        nvml: ModuleType | Any | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cuda_index = cuda_index
        self.interval_s = interval_s
        self.on_sample = on_sample
        self._nvml = nvml
        self._env = os.environ if env is None else env
        self._handle: Any = None
        self._initialised = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest: GpuSample | None = None

    @property
    def enabled(self) -> bool:
        return self._handle is not None

    def open(self) -> bool:
        """Initialise NVML and find the device; False (logged once at debug level) if impossible."""
        nvml = self._nvml if self._nvml is not None else _load_pynvml()
        if nvml is None:
            log.debug("GPU metrics off: the nvidia-ml-py package is not installed")
            return False
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            self._initialised = True
            key = visible_device(self.cuda_index, self._env)
            if isinstance(key, int):
                self._handle = nvml.nvmlDeviceGetHandleByIndex(key)
            else:
                self._handle = nvml.nvmlDeviceGetHandleByUUID(key)
        except (nvml.NVMLError, ValueError) as exc:  # NVMLError_LibraryNotFound where no driver exists
            log.debug("GPU metrics off: NVML unavailable for cuda:%s (%s)", self.cuda_index, exc)
            self._shutdown_nvml()
            return False
        return True

    def sample_once(self) -> GpuSample | None:
        """Read the device now; None when disabled. Unsupported fields come back as None."""
        if self._handle is None:
            return None
        nvml, handle = self._nvml, self._handle
        util = used = total = None
        try:
            util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        except nvml.NVMLError:  # not supported on MIG instances
            pass
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            used, total = int(mem.used), int(mem.total)
        except nvml.NVMLError:
            pass
        sample = GpuSample(self.cuda_index, util, used, total, time.time())
        self.latest = sample
        if self.on_sample is not None:
            self.on_sample(sample)
        return sample

    def start(self) -> bool:
        """Open NVML and sample every ``interval_s`` in a daemon thread; False if disabled."""
        if self._thread is not None:
            return True
        if not self.open():
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"nvml-sampler-{self.cuda_index}", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # a sampler bug must never take the training process down
                log.debug("GPU sampling failed; stopping the sampler", exc_info=True)
                return
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        """Stop the thread and release NVML; safe to call when never started."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.interval_s))
            self._thread = None
        self._handle = None
        self._shutdown_nvml()

    def _shutdown_nvml(self) -> None:
        if self._initialised and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._initialised = False
