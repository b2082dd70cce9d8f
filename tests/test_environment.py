"""runtime/environment.py: the GPU memory query behind --gpu_memory_fraction (no GPU here,
so the CUDA driver is a stand-in that follows the driver API's calling convention)."""

import ctypes

from runtime import environment


class FakeDriver:
    """cuInit, cuDeviceGet and cuDeviceTotalMem_v2 of a machine with two 40 GiB GPUs."""

    def __init__(self, fail=None):
        self.fail = fail
        self.calls = []

    def cuInit(self, flags):
        self.calls.append(("cuInit", flags))
        return 100 if self.fail == "init" else 0  # CUDA_ERROR_NO_DEVICE

    def cuDeviceGet(self, device, ordinal):
        self.calls.append(("cuDeviceGet", ordinal))
        if ordinal >= 2:
            return 101  # CUDA_ERROR_INVALID_DEVICE
        device._obj.value = 10 + ordinal
        return 0

    def cuDeviceTotalMem_v2(self, total, device):
        self.calls.append(("cuDeviceTotalMem_v2", device.value))  # by value
        total._obj.value = 40 * 2**30
        return 0


def test_total_memory_comes_from_the_driver(monkeypatch):
    driver = FakeDriver()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: driver)
    assert environment.gpu_total_memory_mb(1) == 40 * 1024
    assert driver.calls == [("cuInit", 0), ("cuDeviceGet", 1), ("cuDeviceTotalMem_v2", 11)]


def test_no_driver_or_no_such_device_gives_none(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeDriver())
    assert environment.gpu_total_memory_mb(5) is None
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeDriver(fail="init"))
    assert environment.gpu_total_memory_mb(0) is None

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert environment.gpu_total_memory_mb(0) is None
