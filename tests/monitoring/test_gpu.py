"""NvmlSampler: silent without NVML, correct readings and device mapping with it."""

from __future__ import annotations

import logging
import threading
import types

import pytest

from gbcosface.monitoring.gpu import NvmlSampler, visible_device


class FakeNvml:
    """The slice of pynvml's API the sampler uses, over a host with 4 GPUs."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's own spelling
        pass

    def __init__(self, fail_init: bool = False, util_supported: bool = True) -> None:
        self.fail_init = fail_init
        self.util_supported = util_supported
        self.inits = self.shutdowns = 0
        self.handles: list[object] = []

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        if not 0 <= index < 4:
            raise self.NVMLError("Invalid Argument")
        self.handles.append(("index", index))
        return ("index", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> tuple[str, str]:
        self.handles.append(("uuid", uuid))
        return ("uuid", uuid)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> types.SimpleNamespace:
        if not self.util_supported:
            raise self.NVMLError("Not Supported")
        return types.SimpleNamespace(gpu=42, memory=7)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> types.SimpleNamespace:
        return types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30, free=77 * 2**30)


def _real_nvml_works() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_real_nvml_absent_is_silent_or_present_is_read(caplog):
    """With the real nvidia-ml-py: no GPU (this machine) -> disabled, one debug line, no error."""
    sampler = NvmlSampler(0, interval_s=0.05)
    with caplog.at_level(logging.DEBUG, logger="gbcosface.monitoring.gpu"):
        started = sampler.start()
    try:
        if _real_nvml_works():  # a GPU machine: the sampler reads the device
            assert started and sampler.enabled
            sample = sampler.sample_once()
            assert sample is not None and sample.memory_total_bytes and sample.memory_total_bytes > 0
            assert sample.utilization_ratio is None or 0.0 <= sample.utilization_ratio <= 1.0
        else:
            assert started is False and not sampler.enabled
            assert sampler.sample_once() is None
            records = [r for r in caplog.records if r.name == "gbcosface.monitoring.gpu"]
            assert len(records) == 1 and records[0].levelno == logging.DEBUG
            assert "GPU metrics off" in records[0].getMessage()
    finally:
        sampler.stop()


def test_library_not_found_disables(caplog):
    fake = FakeNvml(fail_init=True)
    sampler = NvmlSampler(0, nvml=fake, env={})
    with caplog.at_level(logging.DEBUG, logger="gbcosface.monitoring.gpu"):
        assert sampler.start() is False
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    sampler.stop()
    assert fake.shutdowns == 0  # never initialised, never shut down


def test_sample_values_and_callback():
    fake = FakeNvml()
    seen = []
    sampler = NvmlSampler(2, on_sample=seen.append, nvml=fake, env={})
    assert sampler.open()
    sample = sampler.sample_once()
    assert sample is not None and seen == [sample] and sampler.latest == sample
    assert (sample.index, sample.utilization_ratio) == (2, 0.42)
    assert (sample.memory_used_bytes, sample.memory_total_bytes) == (3 * 2**30, 80 * 2**30)
    assert fake.handles == [("index", 2)]
    sampler.stop()
    assert fake.shutdowns == 1


def test_unsupported_utilisation_keeps_memory():
    sampler = NvmlSampler(0, nvml=FakeNvml(util_supported=False), env={})
    assert sampler.open()
    sample = sampler.sample_once()
    assert sample is not None and sample.utilization_ratio is None and sample.memory_used_bytes == 3 * 2**30
    sampler.stop()


def test_cuda_visible_devices_maps_to_the_physical_gpu():
    fake = FakeNvml()
    sampler = NvmlSampler(1, nvml=fake, env={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert sampler.open()
    assert fake.handles == [("index", 3)]
    sampler.stop()
    fake = FakeNvml()
    sampler = NvmlSampler(0, nvml=fake, env={"CUDA_VISIBLE_DEVICES": "GPU-8f1c,GPU-77aa"})
    assert sampler.open()
    assert fake.handles == [("uuid", "GPU-8f1c")]
    sampler.stop()


def test_invalid_device_disables_instead_of_raising():
    fake = FakeNvml()
    assert NvmlSampler(7, nvml=fake, env={}).start() is False  # NVML has no device 7
    assert fake.shutdowns == 1  # the successful nvmlInit was balanced
    assert NvmlSampler(2, nvml=FakeNvml(), env={"CUDA_VISIBLE_DEVICES": "0"}).start() is False


def test_visible_device():
    assert visible_device(1, {}) == 1
    assert visible_device(1, {"CUDA_VISIBLE_DEVICES": ""}) == 1
    assert visible_device(0, {"CUDA_VISIBLE_DEVICES": " 5 , 6"}) == 5
    assert visible_device(1, {"CUDA_VISIBLE_DEVICES": "MIG-a,MIG-b"}) == "MIG-b"
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        visible_device(2, {"CUDA_VISIBLE_DEVICES": "0,1"})


def test_thread_samples_repeatedly_and_stops():
    fake = FakeNvml()
    got_two = threading.Event()
    seen = []

    def on_sample(sample):
        seen.append(sample)
        if len(seen) >= 2:
            got_two.set()

    sampler = NvmlSampler(0, interval_s=0.01, on_sample=on_sample, nvml=fake, env={})
    assert sampler.start()
    assert got_two.wait(timeout=30)
    sampler.stop()
    count = len(seen)
    assert not any(t.name.startswith("nvml-sampler") for t in threading.enumerate())
    assert len(seen) == count  # nothing after stop()
    assert fake.shutdowns == 1
