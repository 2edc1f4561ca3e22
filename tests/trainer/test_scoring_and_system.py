from __future__ import annotations

import sys
import types

import pytest
import torch

from trainer.scoring import score_prediction
from trainer.system import SystemMonitor


def test_scores():
    assert score_prediction("Lima", "Lima") == {"bleu": 100.0, "rouge_l": 1.0}
    assert score_prediction("Quito", "Lima") == {"bleu": 0.0, "rouge_l": 0.0}
    assert score_prediction("", "Lima") == {"bleu": 0.0, "rouge_l": 0.0}
    partial = score_prediction("The capital of Peru is Lima", "The capital is Lima")
    assert 0 < partial["bleu"] < 100 and partial["rouge_l"] == pytest.approx(0.8)


def test_cpu_and_ram_always(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    values = SystemMonitor().values()
    assert set(values) == {"system_cpu_percent", "system_ram_used_mb"}
    assert 0 <= values["system_cpu_percent"] <= 100 and values["system_ram_used_mb"] > 0


def _fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(uuid="abc-123"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (3 * 2**30, 8 * 2**30))


def test_gpu_values_through_nvml(monkeypatch):
    _fake_cuda(monkeypatch)
    handles = []
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: handles.append(uuid) or "handle",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=87),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=6 * 2**30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    values = SystemMonitor().values()
    assert handles == ["GPU-abc-123"]
    assert (values["gpu_util_percent"], values["gpu_mem_used_mb"]) == (87.0, 6144.0)


def test_gpu_memory_without_nvml(monkeypatch):
    _fake_cuda(monkeypatch)

    def broken():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=broken))
    values = SystemMonitor().values()
    assert values["gpu_mem_used_mb"] == 5120.0 and "gpu_util_percent" not in values


def _nvml(**extra) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetHandleByUUID=lambda uuid: "handle", NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=50),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=2**30), **extra)


def test_gpu_temperature_through_nvml(monkeypatch):
    _fake_cuda(monkeypatch)
    asked = []
    nvml = _nvml(nvmlDeviceGetTemperature=lambda h, sensor: asked.append((h, sensor)) or 71)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    values = SystemMonitor().values()
    assert values["gpu_temperature_c"] == 71.0 and asked == [("handle", 0)]
    assert values["gpu_util_percent"] == 50.0  # the other NVML values are there too


def test_a_gpu_without_a_temperature_sensor_keeps_its_other_values(monkeypatch):
    _fake_cuda(monkeypatch)

    def no_sensor(handle, sensor):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    monkeypatch.setitem(sys.modules, "pynvml", _nvml(nvmlDeviceGetTemperature=no_sensor))
    values = SystemMonitor().values()
    assert "gpu_temperature_c" not in values
    assert (values["gpu_util_percent"], values["gpu_mem_used_mb"]) == (50.0, 1024.0)
