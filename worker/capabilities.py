"""What the worker's binaries can do, probed once at start-up.

For each configured binary the worker runs ``BINARY OPTION`` for each probe option,
exactly as a caller would (banner included), and keeps the raw outputs so the drop-in
can replay them byte for byte. From the same outputs it reads the names the coordinator
matches jobs against. The registration format is documented in ``docs/lifecycle.md``.
"""

from __future__ import annotations

import base64
import logging
import re
import shutil
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from worker.hardware import HardwareCheck, codec_lines, hardware_names, offer_checked

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 20.0
PROBE_OPTIONS = ("-version", "-encoders", "-decoders", "-filters", "-hwaccels", "-formats")

# " V....D libx264   description" (encoders, decoders): six flag characters, then the name.
CODEC_LINE = re.compile(rb"^ [VASDT.][A-Z.]{5} (\S+)")
# " T.C scale   V->V   description": three flag characters, name, then the pads.
FILTER_LINE = re.compile(rb"^ [T.][S.][C.] (\S+)\s+\S*->\S*")
# " DE matroska,webm   description": two flag characters (device formats add a third).
FORMAT_LINE = re.compile(rb"^ [D ][E ]d? ?(\S+)")


def _after_separator(stdout: bytes, marker: bytes) -> list[bytes]:
    lines = stdout.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == marker:
            return lines[index + 1 :]
    return []


def parse_codecs(stdout: bytes) -> list[str]:
    names = []
    for line in _after_separator(stdout, b"------"):
        match = CODEC_LINE.match(line)
        if match:
            names.append(match.group(1).decode(errors="replace"))
    return sorted(set(names))


def parse_filters(stdout: bytes) -> list[str]:
    names = []
    for line in stdout.splitlines():
        match = FILTER_LINE.match(line)
        if match:
            names.append(match.group(1).decode(errors="replace"))
    return sorted(set(names))


def parse_hwaccels(stdout: bytes) -> list[str]:
    lines = stdout.splitlines()
    for index, line in enumerate(lines):
        if line.strip().endswith(b"methods:"):
            return sorted({ln.strip().decode(errors="replace") for ln in lines[index + 1 :]} - {""})
    return []


def parse_formats(stdout: bytes) -> list[str]:
    names: set[str] = set()
    for line in _after_separator(stdout, b"--"):
        match = FORMAT_LINE.match(line)
        if match:
            names.update(match.group(1).decode(errors="replace").split(","))
    return sorted(names - {""})


PARSERS = {
    "-encoders": ("encoders", parse_codecs),
    "-decoders": ("decoders", parse_codecs),
    "-filters": ("filters", parse_filters),
    "-hwaccels": ("hwaccels", parse_hwaccels),
    "-formats": ("formats", parse_formats),
}


def run_probe(path: str, option: str) -> dict[str, Any] | None:
    """The raw result of ``path option``, or None if it could not run at all."""
    try:
        result = subprocess.run(
            [path, option],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("probe %s %s failed: %s", path, option, exc)
        return None
    return {
        "stdout": base64.b64encode(result.stdout).decode(),
        "stderr": base64.b64encode(result.stderr).decode(),
        "exit_code": result.returncode,
    }


def probe_binary(path: str) -> dict[str, Any] | None:
    """The registration entry of one binary, or None when it does not run."""
    probes: dict[str, Any] = {}
    for option in PROBE_OPTIONS:
        probe = run_probe(path, option)
        if probe is None:
            return None
        probes[option] = probe
    version_out = base64.b64decode(probes["-version"]["stdout"])
    if probes["-version"]["exit_code"] != 0 or not version_out:
        return None
    capabilities: dict[str, list[str]] = {}
    for option, (kind, parse) in PARSERS.items():
        capabilities[kind] = parse(base64.b64decode(probes[option]["stdout"]))
    version = version_out.split(b"\n", 1)[0].decode(errors="replace").strip()
    verdicts = check_hardware(path, version, probes, capabilities)
    return {
        "path": path,
        "version": version,
        "probes": probes,
        # What the scheduler matches jobs against: hardware only once a check passed.
        "capabilities": offer_checked(capabilities, verdicts),
        "hardware": verdicts,
    }


def check_hardware(
    path: str, version: str, probes: dict[str, Any], capabilities: dict[str, list[str]]
) -> dict[str, str]:
    """``{name: "ok" or why not}`` for each hardware method and codec the binary lists.

    Only an ffmpeg can run the one-frame checks (worker/hardware.py); another binary
    (ffprobe) offers no hardware at all rather than hardware nobody checked.
    """
    names = hardware_names(capabilities)
    if not names:
        return {}
    if not version.startswith("ffmpeg version"):
        return {name: "not checked: only ffmpeg runs a one-frame check" for name in names}
    encoders_out = base64.b64decode(probes["-encoders"]["stdout"])
    decoders_out = base64.b64decode(probes["-decoders"]["stdout"])
    return HardwareCheck(path).verdicts(
        capabilities["hwaccels"],
        codec_lines(encoders_out),
        codec_lines(decoders_out),
        set(capabilities["encoders"]),
    )


def probe_binaries(binaries: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``{name: entry}`` for each configured binary that runs (see ``probe_binary``).

    The binaries are probed at the same time: the worker goes online sooner.
    """
    found: dict[str, dict[str, Any]] = {}
    paths = {name: shutil.which(configured) for name, configured in binaries.items()}
    with ThreadPoolExecutor(max(len(paths), 1)) as pool:
        entries = dict(
            zip(
                paths,
                pool.map(lambda p: probe_binary(p) if p else None, paths.values()),
                strict=True,
            )
        )
    for name, configured in binaries.items():
        path = paths[name]
        if path is None:
            log.warning("binary %s (%s) not found; not offering it", name, configured)
            continue
        entry = entries[name]
        if entry is None:
            log.warning("binary %s (%s) does not run; not offering it", name, path)
            continue
        found[name] = entry
        caps = entry["capabilities"]
        proven = sorted(n for n, verdict in entry["hardware"].items() if verdict == "ok")
        log.info(
            "%s: %s (%s encoders, %s decoders, %s filters, hwaccels: %s; hardware checked: %s)",
            name,
            entry["version"],
            len(caps["encoders"]),
            len(caps["decoders"]),
            len(caps["filters"]),
            ",".join(caps["hwaccels"]) or "none",
            ",".join(proven) or f"none of {len(entry['hardware'])} passed",
        )
    return found
