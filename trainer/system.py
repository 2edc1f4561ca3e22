"""System metrics sent with every train record: CPU and RAM always, GPU utilisation and memory where there is one.

* ``system_cpu_percent``: machine CPU use since the previous sample (psutil, all cores, 0-100).
* ``system_ram_used_mb``: machine RAM in use.
* ``gpu_util_percent``, ``gpu_mem_used_mb``: this process's CUDA device, through NVML (nvidia-ml-py); without NVML,
  the device memory in use from ``torch.cuda.mem_get_info`` and no utilisation. Absent without CUDA.
* ``gpu_temperature_c``: that device's core temperature in degrees Celsius, through NVML only (absent without it,
  or where the device does not report one).

Every probe is guarded: a failing one drops its values, never the record.
"""

from __future__ import annotations

import logging

import psutil

log = logging.getLogger(__name__)
MIB = 2**20


class SystemMonitor:
    def __init__(self):
        psutil.cpu_percent(interval=None)  # the first call only starts the interval
        self._cuda = False
        self._nvml = None
        self._handle = None
        try:
            import torch

            self._cuda = torch.cuda.is_available()
        except Exception:
            log.debug("torch.cuda is unavailable", exc_info=True)
        if self._cuda:
            self._open_nvml()

    def _open_nvml(self) -> None:
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            index = torch.cuda.current_device()
            uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
            if uuid:
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            else:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception:
            log.info("NVML is unavailable: GPU utilisation will not be reported", exc_info=True)
            self._nvml = self._handle = None

    def values(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            out["system_cpu_percent"] = psutil.cpu_percent(interval=None)
            out["system_ram_used_mb"] = psutil.virtual_memory().used / MIB
        except Exception:
            log.debug("psutil probe failed", exc_info=True)
        if self._cuda:
            out.update(self._gpu_values())
        return out

    def _gpu_values(self) -> dict[str, float]:
        if self._nvml is not None:
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                return {"gpu_util_percent": float(util.gpu), "gpu_mem_used_mb": memory.used / MIB,
                        **self._temperature()}
            except Exception:
                log.debug("NVML probe failed", exc_info=True)
        try:
            import torch

            free, total = torch.cuda.mem_get_info()
            return {"gpu_mem_used_mb": (total - free) / MIB}
        except Exception:
            log.debug("CUDA memory probe failed", exc_info=True)
            return {}

    def _temperature(self) -> dict[str, float]:
        """The GPU core's temperature; nothing when NVML cannot read one (some virtual GPUs report none)."""
        try:
            celsius = self._nvml.nvmlDeviceGetTemperature(self._handle, self._nvml.NVML_TEMPERATURE_GPU)
        except Exception:
            log.debug("NVML temperature probe failed", exc_info=True)
            return {}
        return {"gpu_temperature_c": float(celsius)}
