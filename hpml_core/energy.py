"""Reads the GPU's energy counter over the timed steps (the figure and its rules:
``hpml_core.contract.energy``).

The counter is NVML's, through ``nvidia-ml-py`` (``pynvml``, NVIDIA's own binding), found by the
GPU's PCI bus id so that ``CUDA_VISIBLE_DEVICES`` and Slurm's GPU binding cannot point a rank at
another GPU's counter. Reading it costs a device synchronise at each end of the timed steps,
none inside them, so tokens/s is unchanged. Where there is no counter the meter holds why, and
the rank file records that instead of a figure.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from hpml_core.contract.energy import Energy, run_joules_per_token


def _pci_bus_id(device: torch.device) -> str:
    """The GPU's address as NVML writes it (domain:bus:device.function)."""
    props = torch.cuda.get_device_properties(device)
    return f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"


class EnergyMeter:
    def __init__(self, device: torch.device):
        self.device, self._handle, self._read = device, None, None
        self.bus_id: str | None = None
        self.missing_reason: str | None = None
        self._start: tuple[float, int] | None = None
        self.span: tuple[float, float] | None = None  # (seconds, joules) once stopped
        if device.type != "cuda":
            self.missing_reason = f"no energy counter on a {device.type} device (NVML measures NVIDIA GPUs)"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.bus_id = _pci_bus_id(device)
            self._handle = pynvml.nvmlDeviceGetHandleByPciBusId(self.bus_id)
            self._read = pynvml.nvmlDeviceGetTotalEnergyConsumption
            self._read(self._handle)  # a GPU older than Volta says NotSupported here, not at the end
        except Exception as exc:  # ImportError, pynvml.NVMLError (no library, no driver, not supported)
            self._handle = None
            self.missing_reason = f"NVML's energy counter could not be read: {type(exc).__name__}: {exc}"

    def start(self) -> None:
        """At the start of the first timed step: the device's queue drained first."""
        if self._handle is not None:
            torch.cuda.synchronize(self.device)
            self._start = (time.perf_counter(), self._read(self._handle))

    def stop(self) -> None:
        """At the end of the last timed step, once the device has finished it."""
        if self._handle is not None and self._start is not None:
            torch.cuda.synchronize(self.device)
            seconds, millijoules = time.perf_counter(), self._read(self._handle)
            self.span = (seconds - self._start[0], (millijoules - self._start[1]) / 1000)

    def record(self, timed_steps: int, run_tokens: int) -> tuple[Energy | None, str | None]:
        """Collective on a GPU (every rank's reading, for the run's figure): the rank file's
        energy and, where there is none, why."""
        reading = (self.bus_id, self.span[1]) if self.span is not None and self.span[0] > 0 else None
        readings = [reading]
        if self.device.type == "cuda" and dist.is_initialized():
            readings = [None] * dist.get_world_size()
            dist.all_gather_object(readings, reading)
        if reading is None:
            return None, self.missing_reason or "the timed steps' span was not read (the attempt did not finish them)"
        seconds, joules = self.span
        return Energy(device=self.bus_id, joules=joules, span_s=seconds, timed_steps=timed_steps, run_tokens=run_tokens,
                      mean_power_w=joules / seconds,
                      run_joules_per_token=run_joules_per_token(readings, run_tokens)), None
