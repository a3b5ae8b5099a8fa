"""The worker's load samples: /proc for real, GPU tools from their output formats.

There is no GPU here: the "no GPU" path runs for real (no tool installed, no ``gpus``),
and the GPU path runs the real subprocess code against stand-in tools that print the
fixtures in tests/fixtures/gpu (see its README) exactly as the real tools do, including
an older nvidia-smi that refuses a field and an intel_gpu_top that never exits.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from worker.load import (
    NVIDIA_BASIC_FIELDS,
    LoadMonitor,
    json_objects,
    parse_intel_json,
    parse_meminfo,
    parse_nvidia_csv,
    parse_proc_stat,
)

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_nvidia_csv_with_unsupported_values() -> None:
    gpus = parse_nvidia_csv(fixture("nvidia-smi-query.csv"))
    assert gpus == [
        {
            "vendor": "nvidia",
            "index": 0,
            "name": "NVIDIA GeForce GTX 1660 SUPER",
            "utilization": 38,
            "encoder": 61,
            "decoder": 22,
            "memory_used_mib": 1210,
            "memory_total_mib": 6144,
            "encoder_sessions": 2,
        },
        {
            "vendor": "nvidia",
            "index": 1,
            "name": "Tesla T4",
            "utilization": 3,
            "encoder": None,
            "decoder": None,
            "memory_used_mib": 402,
            "memory_total_mib": 15360,
            "encoder_sessions": 0,
        },
    ]
    basic = parse_nvidia_csv(fixture("nvidia-smi-basic.csv"), NVIDIA_BASIC_FIELDS)
    assert basic[0]["encoder_sessions"] == 1 and "encoder" not in basic[0]
    # A line that does not fit the fields is left out, not mis-assigned.
    assert parse_nvidia_csv("0, a, b\n") == []


def test_intel_json_takes_the_last_complete_sample() -> None:
    stream = fixture("intel_gpu_top.json")
    assert len(json_objects(stream)) == 2  # the third was cut off
    assert parse_intel_json(stream) == [
        {
            "vendor": "intel",
            "index": 0,
            "name": "Intel GPU",
            "utilization": pytest.approx(27.415106),
            "encoder": pytest.approx(64.213018),
            "encoder_sessions": 2,  # two ffmpegs use the video engine, Xorg does not
        }
    ]
    older = parse_intel_json(fixture("intel_gpu_top-older.json"))
    # Per-instance engines: the busiest video engine; no clients, so no session count.
    assert older[0]["encoder"] == pytest.approx(35.529766)
    assert older[0]["utilization"] == pytest.approx(4.120441)
    assert "encoder_sessions" not in older[0]
    assert parse_intel_json("") == [] and parse_intel_json('{"period": {') == []


def test_proc_parsing() -> None:
    assert parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n") == (150, 1000)
    meminfo = "MemTotal:       16000000 kB\nMemFree: 1 kB\nMemAvailable:    4000000 kB\n"
    assert parse_meminfo(meminfo) == {"memory_percent": 75.0, "memory_total_mib": 15625}
    assert parse_meminfo("nothing") == {}


def test_no_gpu_here_and_real_cpu_and_memory() -> None:
    if shutil.which("nvidia-smi") or shutil.which("intel_gpu_top"):
        pytest.skip("this machine has GPU tools: the no-GPU path cannot be shown here")
    monitor = LoadMonitor()
    assert monitor.nvidia_smi is None and monitor.intel_gpu_top is None
    first = monitor.sample()
    assert "cpu_percent" not in first  # needs two samples
    busy_until = time.monotonic() + 0.3
    while time.monotonic() < busy_until:
        pass
    second = monitor.sample()
    assert 0.0 <= second["cpu_percent"] <= 100.0
    assert 0.0 < second["memory_percent"] < 100.0
    assert second["cpus"] == os.cpu_count() and "load_1m" in second
    assert "gpus" not in second


def tool(path: Path, script: str) -> str:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_gpu_tools_through_their_command_lines(tmp_path: Path) -> None:
    # An older driver: the full query is refused, the basic one answers; the monitor
    # remembers and asks only the basic one afterwards.
    calls = tmp_path / "calls"
    nvidia = tool(
        tmp_path / "nvidia-smi",
        f'echo "$1" >> {calls}\n'
        'case "$1" in *utilization.encoder*)'
        f" cat {FIXTURES / 'nvidia-smi-unknown-field.txt'}; exit 2;; esac\n"
        f"cat {FIXTURES / 'nvidia-smi-basic.csv'}\n",
    )
    # intel_gpu_top never ends by itself: what it wrote in its time is the sample.
    intel = tool(tmp_path / "intel_gpu_top", f"cat {FIXTURES / 'intel_gpu_top.json'}\nsleep 30\n")
    monitor = LoadMonitor(nvidia_smi=nvidia, intel_gpu_top=intel)
    started = time.monotonic()
    gpus = monitor.sample()["gpus"]
    assert time.monotonic() - started < 5
    assert [g["vendor"] for g in gpus] == ["nvidia", "intel"]
    assert gpus[0]["name"] == "Quadro P2000" and gpus[0]["encoder_sessions"] == 1
    assert gpus[1]["encoder_sessions"] == 2
    monitor.sample()
    asked = calls.read_text().splitlines()
    assert len(asked) == 3 and "utilization.encoder" not in asked[2]


def test_a_broken_tool_gives_no_gpus(tmp_path: Path) -> None:
    broken = tool(tmp_path / "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert "gpus" not in LoadMonitor(nvidia_smi=broken).sample()


def test_the_monitor_thread_samples_and_stops() -> None:
    monitor = LoadMonitor(interval=0.05)
    monitor.start()
    try:
        time.sleep(0.3)
        assert "cpu_percent" in monitor.latest()
    finally:
        monitor.stop()
        monitor.join(2)
    assert monitor._thread is not None and not monitor._thread.is_alive()
