"""How busy this host is: CPU, memory and, where there is one, the GPU.

The worker sends the latest sample with each heartbeat, so an operator sees load next
to slots. A sample is taken in a thread of its own, every ``interval`` seconds: reading
``/proc`` costs microseconds, but ``nvidia-smi`` and ``intel_gpu_top`` take tenths of a
second and can hang with a wedged driver, which must never delay a heartbeat. The GPU
tools are used only when installed; without them a sample simply has no ``gpus``.

A sample, as sent (every field may be missing where the host cannot say)::

    {"cpu_percent": 37.5, "cpus": 8, "load_1m": 2.1, "memory_percent": 61.2,
     "memory_total_mib": 15872,
     "gpus": [{"vendor": "nvidia", "index": 0, "name": "...", "utilization": 23.0,
               "encoder": 41.0, "decoder": 12.0, "memory_used_mib": 1024,
               "memory_total_mib": 6144, "encoder_sessions": 2}]}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 10.0
# The first CPU figure needs two samples: the second comes soon after the start, so the
# registration (after the binaries' probes) already carries one.
FIRST_SAMPLE_SECONDS = 0.5
TOOL_TIMEOUT = 5.0
NVIDIA_FIELDS = (
    "index",
    "name",
    "utilization.gpu",
    "utilization.encoder",
    "utilization.decoder",
    "memory.used",
    "memory.total",
    "encoder.stats.sessionCount",
)
# Drivers older than the encoder/decoder utilisation fields refuse the whole query.
NVIDIA_BASIC_FIELDS = (
    "index",
    "name",
    "utilization.gpu",
    "memory.used",
    "memory.total",
    "encoder.stats.sessionCount",
)
NVIDIA_KEYS = {
    "index": "index",
    "name": "name",
    "utilization.gpu": "utilization",
    "utilization.encoder": "encoder",
    "utilization.decoder": "decoder",
    "memory.used": "memory_used_mib",
    "memory.total": "memory_total_mib",
    "encoder.stats.sessionCount": "encoder_sessions",
}
# intel_gpu_top samples over its period; two periods give one full sample.
INTEL_PERIOD_MS = 500
INTEL_RUN_SECONDS = 1.3


def _number(text: str) -> float | int | None:
    """``"23"`` -> 23, ``"41.5"`` -> 41.5, ``"[N/A]"``/``"[Not Supported]"`` -> None."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and "." not in text else value


def parse_nvidia_csv(stdout: str, fields: tuple[str, ...] = NVIDIA_FIELDS) -> list[dict[str, Any]]:
    """The GPUs in ``nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits`` output."""
    gpus = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(fields):
            # A GPU name never contains a comma in practice; a line that does not fit
            # is skipped rather than mis-assigned.
            continue
        gpu: dict[str, Any] = {"vendor": "nvidia"}
        for field, value in zip(fields, values, strict=True):
            key = NVIDIA_KEYS[field]
            gpu[key] = value if key == "name" else _number(value)
        gpus.append(gpu)
    return gpus


def json_objects(text: str) -> list[dict[str, Any]]:
    """The complete top-level JSON objects in ``text``.

    ``intel_gpu_top -J`` writes an endless array, one object per period, and is stopped
    mid-object: whatever is cut off is left out.
    """
    objects: list[dict[str, Any]] = []
    depth = 0
    start = -1
    in_string = escaped = False
    for pos, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            if depth == 0:
                start = pos
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                try:
                    value = json.loads(text[start : pos + 1])
                except ValueError:
                    continue
                if isinstance(value, dict):
                    objects.append(value)
    return objects


def _engine(engines: dict[str, Any], kind: str) -> float | None:
    """Busy percent of an engine class: ``Video`` (newer tools) or ``Video/0`` (older)."""
    busiest = None
    for name, data in engines.items():
        if name == kind or name.startswith(kind + "/"):
            busy = _number(str(data.get("busy", ""))) if isinstance(data, dict) else None
            if busy is not None:
                busiest = busy if busiest is None else max(busiest, busy)
    return None if busiest is None else float(busiest)


def parse_intel_json(stdout: str) -> list[dict[str, Any]]:
    """The GPU in ``intel_gpu_top -J`` output, from its last complete sample.

    Utilisation is the render engine's busy time, ``encoder`` the video engine's (where
    Quick Sync encodes and decodes); ``encoder_sessions`` counts the clients using the
    video engine, when the tool lists clients.
    """
    samples = [s for s in json_objects(stdout) if isinstance(s.get("engines"), dict)]
    if not samples:
        return []
    sample = samples[-1]
    engines = sample["engines"]
    gpu: dict[str, Any] = {
        "vendor": "intel",
        "index": 0,
        "name": "Intel GPU",
        "utilization": _engine(engines, "Render/3D"),
        "encoder": _engine(engines, "Video"),
    }
    clients = sample.get("clients")
    if isinstance(clients, dict):
        sessions = 0
        for client in clients.values():
            classes = client.get("engine-classes", {}) if isinstance(client, dict) else {}
            if (_engine(classes, "Video") or 0) > 0:
                sessions += 1
        gpu["encoder_sessions"] = sessions
    return [gpu]


def parse_proc_stat(text: str) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            total = sum(values[:8])  # guest time is already inside user/nice
            return total - idle, total
    return None


def parse_meminfo(text: str) -> dict[str, float]:
    """Memory in use, as a percentage, and the total in MiB, from ``/proc/meminfo``."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])  # KiB
    total = values.get("MemTotal")
    available = values.get("MemAvailable")
    if not total or available is None:
        return {}
    return {
        "memory_percent": round(100.0 * (total - available) / total, 1),
        "memory_total_mib": total // 1024,
    }


class LoadMonitor:
    """Samples the host every ``interval`` seconds; ``latest()`` is the newest sample."""

    def __init__(
        self,
        interval: float = SAMPLE_SECONDS,
        proc: Path = Path("/proc"),
        nvidia_smi: str | None = None,
        intel_gpu_top: str | None = None,
    ) -> None:
        self.interval = interval
        self.proc = proc
        self.nvidia_smi = nvidia_smi or shutil.which("nvidia-smi")
        self.intel_gpu_top = intel_gpu_top or shutil.which("intel_gpu_top")
        self._nvidia_fields: tuple[str, ...] = NVIDIA_FIELDS
        self._previous_cpu: tuple[int, int] | None = None
        self._latest: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def latest(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._latest)

    def _run(self) -> None:
        wait = min(FIRST_SAMPLE_SECONDS, self.interval)
        while not self._stopped.wait(wait):
            wait = self.interval
            try:
                self.sample()
            except Exception:  # a sampler bug must not end the samples for good
                log.exception("load sample failed")

    def sample(self) -> dict[str, Any]:
        result: dict[str, Any] = {"cpus": os.cpu_count()}
        with contextlib.suppress(OSError):  # not every system has a load average
            result["load_1m"] = round(os.getloadavg()[0], 2)
        result.update(self._cpu())
        result.update(self._read(self.proc / "meminfo", parse_meminfo))
        gpus = self._gpus()
        if gpus:
            result["gpus"] = gpus
        with self._lock:
            self._latest = result
        return result

    def _read(self, path: Path, parse: Any) -> Any:
        try:
            return parse(path.read_text())
        except OSError:
            return {}

    def _cpu(self) -> dict[str, float]:
        """CPU busy percent since the previous sample (nothing on the first)."""
        now = self._read(self.proc / "stat", parse_proc_stat) or None
        previous, self._previous_cpu = self._previous_cpu, now
        if now is None or previous is None or now[1] <= previous[1]:
            return {}
        busy = (now[0] - previous[0]) / (now[1] - previous[1])
        return {"cpu_percent": round(100.0 * min(max(busy, 0.0), 1.0), 1)}

    def _gpus(self) -> list[dict[str, Any]]:
        gpus: list[dict[str, Any]] = []
        if self.nvidia_smi:
            gpus += self._nvidia()
        if self.intel_gpu_top:
            gpus += self._intel()
        return gpus

    def _nvidia(self) -> list[dict[str, Any]]:
        assert self.nvidia_smi is not None
        for fields in dict.fromkeys([self._nvidia_fields, NVIDIA_BASIC_FIELDS]):
            args = [self.nvidia_smi, f"--query-gpu={','.join(fields)}"]
            out = _tool_output([*args, "--format=csv,noheader,nounits"])
            if out is not None:
                self._nvidia_fields = fields  # remembered: no failed query every time
                return parse_nvidia_csv(out, fields)
        return []

    def _intel(self) -> list[dict[str, Any]]:
        assert self.intel_gpu_top is not None
        args = [self.intel_gpu_top, "-J", "-s", str(INTEL_PERIOD_MS), "-o", "-"]
        return parse_intel_json(_tool_output(args, INTEL_RUN_SECONDS, until_stopped=True) or "")


def _tool_output(
    args: list[str], seconds: float = TOOL_TIMEOUT, until_stopped: bool = False
) -> str | None:
    """What a tool printed; ``until_stopped``: it never ends by itself, so it runs for
    ``seconds`` and what it wrote by then is the answer. None when it failed."""
    try:
        result = subprocess.run(
            args, capture_output=True, stdin=subprocess.DEVNULL, timeout=seconds, check=False
        )
    except subprocess.TimeoutExpired as exc:
        if until_stopped and exc.stdout:
            return bytes(exc.stdout).decode(errors="replace")
        return None
    except OSError:
        return None
    if result.returncode != 0:
        return None
    return result.stdout.decode(errors="replace")
