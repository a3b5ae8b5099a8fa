"""``dffmpeg-proxy``: the drop-in. Symlink it as ``ffmpeg`` or ``ffprobe``.

It has no flags of its own: every argument belongs to the remote binary. Its config
comes from ``DFFMPEG_CLIENT_CONFIG`` or the client config files.

A media server starts it for every probe, so start-up matters: modules are imported
only on the path that needs them (the fast probe path never loads the job machinery).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

from client.fastprobe import INFO_PRIORITY, is_information_call, recognise
from dffmpeg.config import ClientConfig, ConfigError, default_state_dir, load_client
from dffmpeg.exitcodes import ExitCode


def binary_name(argv0: str, args: list[str]) -> tuple[str, list[str]]:
    """The binary this call stands for: the link's name, or the first argument."""
    name = os.path.basename(argv0)
    if name.startswith("dffmpeg-proxy"):
        if not args:
            raise ConfigError("usage: dffmpeg-proxy BINARY [ARGS...] (or symlink it as ffmpeg)")
        return args[0], args[1:]
    return name, args


def report(message: str) -> None:
    """The one ``dffmpeg: ...`` line the caller sees when the cluster itself failed
    (control characters in it shown, never obeyed)."""
    from dffmpeg.text import printable  # only on this failure path: start-up stays fast

    with contextlib.suppress(OSError):
        os.write(2, f"dffmpeg: {printable(message)}\n".encode(errors="replace"))


def fallback_binary(config: ClientConfig, binary: str) -> str | None:
    """The local binary to run when the cluster cannot, if ``local_fallback`` is set."""
    setting = config.local_fallback
    if setting is None:
        return None
    if isinstance(setting, dict):
        return setting.get(binary)
    if os.path.isdir(setting):
        return os.path.join(setting, binary)
    if os.path.basename(setting) == binary:
        return setting
    # ``/usr/bin/ffmpeg`` also names where its siblings (ffprobe) live.
    return os.path.join(os.path.dirname(setting), binary)


def run_locally(path: str, args: list[str], reason: str) -> int:
    """Replace this process with the local binary (same stdin, stdout, stderr, pid)."""
    report(f"{reason}; running {path} locally")
    try:
        os.execv(path, [path, *args])
    except OSError as exc:
        report(f"local fallback {path} failed: {exc}")
    return int(ExitCode.CONFIG_ERROR)


def _record_config_error(binary: str) -> None:
    """No usable config: recorded where a config would put it by default."""
    from client import incidents

    incidents.record(incidents.directory_of(None), incidents.CLUSTER_EXIT, 207, binary)


def reports_waiting(config: ClientConfig) -> str | None:
    """The state directory if earlier runs left something to report, else None.

    The test of ``client.incidents.pending``, made here without importing that module:
    on the fast probe path even one more module import costs a millisecond.
    """
    directory = config.state_dir or str(default_state_dir())
    try:
        if os.stat(os.path.join(directory, "incidents.jsonl")).st_size > 0:
            return directory
    except OSError:
        pass
    return directory if os.path.exists(os.path.join(directory, "sending.json")) else None


def _report_past_runs(api: Any, config: ClientConfig) -> None:
    """The probe reached the coordinator: report earlier fallbacks now, if there are any
    (two stats when there are none; the probe's answer is already written)."""
    directory = reports_waiting(config)
    if directory is not None:
        from pathlib import Path

        from client import reporting

        reporting.report(api, Path(directory))


def launched() -> int:
    """The native launcher's way in when no helper took the call (``client/helper.py``):
    its arguments come after ``-c CODE``; this call runs here and starts a helper for the
    calls after it."""
    del sys.argv[0]
    return main(start_helper=True)


def _start_helper() -> None:
    from client import helper

    with contextlib.suppress(OSError):
        helper.start_in_background(os.environ)


def main(start_helper: bool = False) -> int:
    binary = os.path.basename(sys.argv[0])
    try:
        binary, args = binary_name(sys.argv[0], sys.argv[1:])
        config = load_client()
        if start_helper and config.local_helper:
            _start_helper()
        from client.api import Api

        api = Api.from_config(config)
    except (ConfigError, ValueError) as exc:
        report(str(exc))
        _record_config_error(binary)
        return int(ExitCode.CONFIG_ERROR)
    probe = recognise(args)
    connect_retry = None
    if probe is not None:
        from client.probes import answer_probe

        started = time.monotonic()
        code = answer_probe(api, binary, probe, retry_for=config.connect_retry_seconds)
        if code is not None:
            _report_past_runs(api, config)
            return code
        # A wait for the coordinator spent here is not spent again by the submission.
        spent = time.monotonic() - started
        connect_retry = max(0.0, config.connect_retry_seconds - spent)
    from client.submit import build_request, run

    local = fallback_binary(config, binary)

    def fallback(reason: str) -> int:
        assert local is not None
        code = run_locally(local, args, reason)  # returns only when the exec failed
        from client import incidents

        incidents.record(incidents.directory_of(config), incidents.CLUSTER_EXIT, code, binary)
        return code

    request = build_request(config, binary, args)
    if is_information_call(args):
        request.priority = max(request.priority, INFO_PRIORITY)  # ahead of transcodes
    return run(
        api,
        request,
        fallback=fallback if local else None,
        config=config,
        connect_retry=connect_retry,
    )


if __name__ == "__main__":
    sys.exit(main())
