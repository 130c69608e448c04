"""GPU busy % and memory from NVML, sampled in a background thread while training runs.

NVML's utilisation is the share of time in which any kernel ran: a low reading reliably means an idle GPU
(the seed's 14-23%), a high one does not mean the GPU was used well. Read it beside samples/s and MFU.
Without NVML or a GPU the monitor is off, says why once per process, and returns empty figures.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import torch

_reported: set[str] = set()  # reasons already printed: "off" is said once per process, not per run


def _say_once(reason: str, verbose: bool) -> None:
    if verbose and reason not in _reported:
        _reported.add(reason)
        print(f"GPU monitor off: {reason}")


def _nvml_handle(pynvml, device: torch.device | None):
    """The NVML handle of a torch CUDA device: by UUID (immune to CUDA_VISIBLE_DEVICES renumbering), else index."""
    index = 0
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            for name in (uuid, "GPU-" + uuid, "MIG-" + uuid):
                try:
                    return pynvml.nvmlDeviceGetHandleByUUID(name)
                except pynvml.NVMLError:
                    continue
        except (AttributeError, RuntimeError):
            pass
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        if index < len(visible) and visible[index].strip().isdigit():
            index = int(visible[index])
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def summarise(samples: list[tuple[float, float, int]]) -> dict:
    """(time, util %, memory used bytes) samples -> median/mean util and max memory (None without samples)."""
    util = [s[1] for s in samples]
    return {
        "gpu_util_median": statistics.median(util) if util else None,
        "gpu_util_mean": statistics.fmean(util) if util else None,
        "gpu_mem_used_max_bytes": max(s[2] for s in samples) if samples else None,
        "gpu_samples": len(samples),
    }


class GpuMonitor:
    """Samples utilisation % and memory used every `interval_s` seconds; `start()`, `read()`, `stop()`.

    `read()` returns the figures since the previous read (for a log row) and `stop()` those of the whole
    run. Usable as `with GpuMonitor() as mon: ...; mon.stop()` (exiting the block stops it too).
    """

    def __init__(self, interval_s: float = 0.5, device: torch.device | str | None = None,
                 enabled: bool = True, verbose: bool = True) -> None:
        self.interval_s = interval_s
        self.device = torch.device(device) if isinstance(device, str) else device
        self.verbose = verbose
        self.available, self.reason = False, ""
        self._samples: list[tuple[float, float, int]] = []
        self._read_from = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pynvml = self._handle = None
        self.result: dict | None = None
        if not enabled:
            self.reason = "disabled"
        elif self.device is not None and self.device.type != "cuda":
            self.reason = f"training on {self.device.type}, not on a GPU"
        else:
            self._open()

    def _open(self) -> None:
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.reason = f"NVML unavailable ({exc}): no NVIDIA driver or GPU on this machine"
            return
        try:
            self._handle = _nvml_handle(pynvml, self.device)
            pynvml.nvmlDeviceGetUtilizationRates(self._handle)
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            self.reason = f"NVML cannot read the device ({exc})"
            return
        self._pynvml, self.available = pynvml, True

    def _sample(self) -> None:
        nv = self._pynvml
        util = nv.nvmlDeviceGetUtilizationRates(self._handle).gpu
        used = nv.nvmlDeviceGetMemoryInfo(self._handle).used
        with self._lock:
            self._samples.append((time.time(), float(util), int(used)))

    def _loop(self) -> None:
        while True:
            try:
                self._sample()
            except Exception as exc:  # noqa: BLE001 - a sampling failure ends sampling, never the run
                self.reason = f"sampling stopped: {type(exc).__name__}: {exc}"
                return
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> GpuMonitor:
        if not self.available:
            _say_once(self.reason, self.verbose)
            return self
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="gpu-monitor", daemon=True)
            self._thread.start()
        return self

    def read(self) -> dict:
        """Figures over the samples since the previous read (or start)."""
        with self._lock:
            new = self._samples[self._read_from :]
            self._read_from = len(self._samples)
        return {"available": self.available, **summarise(new)}

    def stop(self) -> dict:
        """Stop sampling; figures over the whole run (also after a second call)."""
        if self.result is not None:
            return self.result
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5 * self.interval_s + 1)
            self._thread = None
        if self._pynvml is not None:
            try:
                self._pynvml.nvmlShutdown()
            except self._pynvml.NVMLError:
                pass
            self._pynvml = None
        with self._lock:
            self.result = {"available": self.available, **summarise(self._samples),
                           "reason": self.reason or None}
        return self.result

    def __enter__(self) -> GpuMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
