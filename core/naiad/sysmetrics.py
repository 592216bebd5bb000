"""CPU, memory and GPU gauges with Triton's names, polled off the event loop.

:class:`SystemSampler` reads ``/proc/stat`` and ``/proc/meminfo`` (CPU metrics) and NVML through
``nvidia-ml-py`` (GPU metrics, the ``naiad[gpu]`` extra; its import name is ``pynvml``) every
``--metrics-interval-ms`` on a worker thread, keeps the latest readings, and is itself the
Prometheus collector of them. Where there is no ``/proc``, no NVML library or no GPU, those
families are absent and one log line says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CpuReading:
    """Whole-machine CPU use over the last interval (0..1) and memory, in bytes."""

    utilization: float
    memory_total: int
    memory_used: int


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one moment; a field NVML does not support on that GPU is ``None``."""

    uuid: str
    utilization: float | None = None
    memory_total: int | None = None
    memory_used: int | None = None
    power_usage: float | None = None
    power_limit: float | None = None
    #: joules since the server started
    energy: float | None = None


# ---- CPU -----------------------------------------------------------------------------------


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(busy, idle) jiffies of all cores from ``/proc/stat``'s ``cpu`` line, as Triton counts.

    busy = user + nice + system + irq + softirq + steal; idle = idle + iowait (guest time is
    already inside user and nice).
    """
    for line in text.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:9]]
            f += [0] * (8 - len(f))
            user, nice, system, idle, iowait, irq, softirq, steal = f
            return user + nice + system + irq + softirq + steal, idle + iowait
    raise ValueError("no 'cpu' line in /proc/stat")


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, used) bytes from ``/proc/meminfo``: used = MemTotal - MemAvailable."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and key in ("MemTotal", "MemAvailable", "MemFree"):
            values[key] = int(parts[0]) * 1024  # kB
    if "MemTotal" not in values:
        raise ValueError("no MemTotal in /proc/meminfo")
    total = values["MemTotal"]
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return total, total - available


class CpuReader:
    """Whole-machine CPU utilization and memory from ``/proc``."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._last: tuple[int, int] | None = None

    def open(self) -> CpuReading:
        """Take the baseline; raises :class:`OSError`/:class:`ValueError` without ``/proc``."""
        self._last = parse_proc_stat((self.proc / "stat").read_text())
        total, used = parse_meminfo((self.proc / "meminfo").read_text())
        return CpuReading(0.0, total, used)

    def read(self) -> CpuReading:
        """Utilization since the previous call, and memory now."""
        busy, idle = parse_proc_stat((self.proc / "stat").read_text())
        utilization = 0.0
        if self._last is not None:
            d_busy, d_idle = busy - self._last[0], idle - self._last[1]
            if d_busy + d_idle > 0:
                utilization = max(0.0, min(1.0, d_busy / (d_busy + d_idle)))
        self._last = (busy, idle)
        total, used = parse_meminfo((self.proc / "meminfo").read_text())
        return CpuReading(utilization, total, used)


# ---- GPU -----------------------------------------------------------------------------------


def _visible(index: int, uuid: str, visible: str | None) -> bool:
    """Whether ``CUDA_VISIBLE_DEVICES`` (indexes or UUIDs; unset = all) includes this GPU."""
    if visible is None:
        return True
    for item in visible.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lstrip("-").isdigit():
            if int(item) < 0:
                return False  # CUDA stops at the first invalid index
            if int(item) == index:
                return True
        elif uuid.startswith(item):
            return True
    return False


class GpuReader:
    """NVML through ``nvidia-ml-py``. Every call may block: use it from a worker thread."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._lock = threading.Lock()  # a read never overlaps close()
        self._devices: list[tuple[Any, str, int | None]] = []  # handle, uuid, energy at start (mJ)

    def open(self) -> str | None:
        """Find the GPUs. Returns why there are no GPU metrics, or ``None`` if there are."""
        try:
            import pynvml
        except ImportError:
            return "GPU metrics disabled: NVML bindings not installed (pip install 'naiad[gpu]')"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            return f"GPU metrics disabled: failed to initialize NVML: {exc}"
        self._nvml = pynvml
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                if isinstance(uuid, bytes):
                    uuid = uuid.decode()
                if _visible(index, uuid, visible):
                    energy = self._try(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
                    self._devices.append((handle, uuid, energy))
        except Exception as exc:
            self.close()
            return f"GPU metrics disabled: NVML failed to list GPUs: {exc}"
        if not self._devices:
            self.close()
            return "GPU metrics disabled: no GPU found"
        return None

    @property
    def uuids(self) -> list[str]:
        return [uuid for _, uuid, _ in self._devices]

    def _try(self, fn: Callable[[Any], T], handle: Any) -> T | None:
        try:
            return fn(handle)
        except self._nvml.NVMLError:
            return None

    def read(self) -> list[GpuReading]:
        with self._lock:
            return self._read() if self._nvml is not None else []

    def _read(self) -> list[GpuReading]:
        nv = self._nvml
        out = []
        for handle, uuid, energy0 in self._devices:
            util = self._try(nv.nvmlDeviceGetUtilizationRates, handle)
            mem = self._try(nv.nvmlDeviceGetMemoryInfo, handle)
            power = self._try(nv.nvmlDeviceGetPowerUsage, handle)
            limit = self._try(nv.nvmlDeviceGetPowerManagementLimit, handle)
            energy = self._try(nv.nvmlDeviceGetTotalEnergyConsumption, handle)
            out.append(
                GpuReading(
                    uuid,
                    utilization=util.gpu / 100.0 if util is not None else None,
                    memory_total=int(mem.total) if mem is not None else None,
                    memory_used=int(mem.used) if mem is not None else None,
                    power_usage=power * 0.001 if power is not None else None,
                    power_limit=limit * 0.001 if limit is not None else None,
                    energy=(energy - energy0) * 0.001
                    if energy is not None and energy0 is not None
                    else None,
                )
            )
        return out

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._nvml = None
            self._devices = []


# ---- the sampler -----------------------------------------------------------------------------

#: (family, help, field of the reading); all gauges
_CPU_FAMILIES = (
    ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", "utilization"),
    ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", "memory_total"),
    ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", "memory_used"),
)
#: (family, help, type, field of the reading), in Triton's units
_GPU_FAMILIES = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge", "utilization"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge", "memory_total"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge", "memory_used"),
    ("nv_gpu_power_usage", "GPU power usage in watts", "gauge", "power_usage"),
    ("nv_gpu_power_limit", "GPU power management limit in watts", "gauge", "power_limit"),
    (
        "nv_energy_consumption",
        "GPU energy consumption in joules since the server started",
        "counter",
        "energy",
    ),
)


class SystemSampler:
    """Polls CPU and GPU readers every ``interval_s`` on a worker thread; a Prometheus collector.

    ``await start()`` opens the readers (logging one line for what is unavailable) and takes a
    first reading; ``await stop()`` ends polling and releases NVML.
    """

    def __init__(self, interval_s: float, *, cpu: bool = True, gpu: bool = True) -> None:
        self.interval_s = max(0.01, interval_s)
        self._cpu: CpuReader | None = CpuReader() if cpu else None
        self._gpu: GpuReader | None = GpuReader() if gpu else None
        self.cpu_reading: CpuReading | None = None
        self.gpu_readings: list[GpuReading] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def gpu_enabled(self) -> bool:
        return self._gpu is not None

    def _open(self) -> None:
        if self._cpu is not None:
            try:
                self.cpu_reading = self._cpu.open()
                log.debug("CPU metrics read from /proc every %.3f s", self.interval_s)
            except (OSError, ValueError) as exc:
                log.info("CPU metrics disabled: cannot read /proc: %s", exc)
                self._cpu = None
        if self._gpu is not None:
            reason = self._gpu.open()
            if reason is not None:
                log.info("%s", reason)
                self._gpu = None
            else:
                log.info("GPU metrics enabled for %s", ", ".join(self._gpu.uuids))
                self.gpu_readings = self._gpu.read()

    def _sample(self) -> None:
        if self._cpu is not None:
            self.cpu_reading = self._cpu.read()
        if self._gpu is not None:
            self.gpu_readings = self._gpu.read()

    async def start(self) -> None:
        await asyncio.to_thread(self._open)
        if self._cpu is not None or self._gpu is not None:
            self._task = asyncio.create_task(self._run(), name="naiad-metrics-sampler")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self._sample)
                self._failing = False
            except Exception:
                if not self._failing:  # one line per run of failures, not one per interval
                    log.exception("reading CPU/GPU metrics failed")
                self._failing = True

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._gpu is not None:
            await asyncio.to_thread(self._gpu.close)
            self._gpu = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        """The latest readings (no I/O here): CPU gauges, then GPU families by ``gpu_uuid``."""
        cpu = self.cpu_reading
        if cpu is not None:
            for name, documentation, attr in _CPU_FAMILIES:
                family = Metric(name, documentation, "gauge")
                family.add_sample(name, {}, getattr(cpu, attr))
                yield family
        if self._gpu is None:
            return
        readings = self.gpu_readings
        for name, documentation, typ, attr in _GPU_FAMILIES:
            family = Metric(name, documentation, typ)
            for r in readings:
                value = getattr(r, attr)
                if value is not None:
                    family.add_sample(name, {"gpu_uuid": r.uuid}, value)
            yield family
