"""``dffmpeg-client doctor``: check, in order, everything a drop-in on this machine needs.

Each check gives one result: passed, failed (with what to do about it), or skipped
because a check it depends on failed (a wrong clock makes every signature fail, so the
credentials are not judged then). The order is the order of dependence: config,
coordinator reachable, clock, credentials, role, path variables served, a real round
trip per path variable and worker, the same ffmpeg on every worker that serves us.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from client.api import Api, ApiError, AuthError, Unreachable
from client.roundtrip import round_trip
from dffmpeg.config import ClientConfig, ConfigError, candidates, load_client
from dffmpeg.text import cell


@dataclass
class Result:
    check: str  # a stable name: config, reachable, clock, credentials, role, paths, ...
    title: str
    ok: bool | None  # None: not run, because an earlier check failed
    detail: str
    fix: str | None = None
    context: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = self.ok is None
        return data


def _passed(check: str, title: str, detail: str, **context: str) -> Result:
    return Result(check, title, True, detail, None, context)


def _failed(check: str, title: str, detail: str, fix: str, **context: str) -> Result:
    return Result(check, title, False, detail, fix, context)


def _skipped(check: str, title: str, because: str, **context: str) -> Result:
    return Result(check, title, None, f"not checked: {because}", None, context)


@dataclass
class Findings:
    """What earlier checks learnt, for the later ones."""

    config: ClientConfig | None = None
    api: Api | None = None
    health: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    clock_ok: bool = False


def check_config(explicit: str | None, found: Findings) -> Result:
    title = "config found and valid"
    try:
        config = load_client(explicit)
        found.api = Api.from_config(config, timeout=10)
    except (ConfigError, ValueError) as exc:
        places = ", ".join(str(p) for p in candidates("client"))
        return _failed(
            "config",
            title,
            str(exc),
            "write a client config with client_id, hmac_key (or hmac_key_file), "
            f"coordinator_url and paths: --config FILE, or one of {places} "
            "(docs/configuration.md)",
        )
    found.config = config
    return _passed(
        "config",
        title,
        f"{config.source or 'config'}: client_id {config.client_id}, "
        f"coordinator {config.coordinator_url}",
    )


def check_reachable(found: Findings) -> Result:
    """Every address of ``coordinator_url`` answers ``/health`` (with several, a party
    fails over between them: one that cannot be reached is a failure waiting to happen)."""
    title = "coordinator reachable"
    assert found.api is not None and found.config is not None
    config = found.config
    answers = []
    for url in config.coordinator_urls:
        api = found.api if url == config.coordinator_url else Api(url, config.client_id, "", 10)
        result = _reachable(api, url, found, first=url == config.coordinator_url)
        if not result.ok:
            return result
        answers.append(result.detail)
    return _passed("reachable", title, "; ".join(answers))


def _reachable(api: Api, url: str, found: Findings, first: bool) -> Result:
    title = "coordinator reachable"
    started = time.monotonic()
    try:
        reply = api.unsigned_get("/health", timeout=5)
    except Unreachable as exc:
        return _failed(
            "reachable",
            title,
            f"cannot reach {url}: {exc}",
            "check coordinator_url, that dffmpeg-coordinator runs there "
            "(systemctl status dffmpeg-coordinator) and listens on an address this "
            "machine can reach (its 'host' key), and firewalls in between",
        )
    finally:
        if not first:
            api.close()
    elapsed = (time.monotonic() - started) * 1000
    try:
        health = reply.json()
    except ValueError:
        health = {}
    if first:
        found.health = health
    if reply.status == 503:
        return _failed(
            "reachable",
            title,
            f"{url} is draining (shutting down)",
            "wait for the coordinator to come back, or point coordinator_url at another one",
        )
    if reply.status != 200 or "status" not in health:
        return _failed(
            "reachable",
            title,
            f"{url}/health answered HTTP {reply.status}: not a dffmpeg coordinator",
            "coordinator_url must be the coordinator's base URL (http://host:port)",
        )
    return _passed("reachable", title, f"{url} answers ({elapsed:.0f} ms)")


def check_clock(found: Findings) -> Result:
    title = "clock within the signing window"
    assert found.api is not None
    sent = time.time()
    try:
        reply = found.api.unsigned_get("/health", timeout=5)
        health = reply.json()
    except (Unreachable, ValueError) as exc:
        return _failed("clock", title, f"no answer to compare clocks with: {exc}", "retry")
    local = (sent + time.time()) / 2
    remote, window = health.get("now"), health.get("auth_window_seconds")
    if not isinstance(remote, int | float) or not isinstance(window, int | float):
        return _failed(
            "clock",
            title,
            "the coordinator does not tell its time (an older version)",
            "upgrade the coordinator",
        )
    skew = local - float(remote)
    side = "ahead of" if skew > 0 else "behind"
    detail = f"this machine is {abs(skew):.1f} s {side} the coordinator; the window is {window} s"
    if abs(skew) >= window:
        return _failed(
            "clock",
            title,
            detail,
            "set the clocks right on both machines and keep them so (NTP: timedatectl "
            "set-ntp true, or chrony); a signed request further off than the window is "
            "refused",
        )
    found.clock_ok = True
    return _passed("clock", title, detail)


def check_credentials(found: Findings) -> Result:
    title = "credentials accepted"
    assert found.api is not None and found.config is not None
    client_id = found.config.client_id
    if not found.clock_ok:
        return _skipped("credentials", title, "the clock is off, so every signature is refused")
    try:
        found.identity = found.api.call("GET", "/doctor/identity")
    except AuthError as exc:
        if exc.status == 403:
            return _failed(
                "credentials",
                title,
                f"{client_id}: {exc.message}",
                "an admin adds this machine's address to the user's allowed networks "
                "(dffmpeg-console, or PUT /api/v1/users/ID/networks)",
            )
        return _failed(
            "credentials",
            title,
            f"the coordinator refused the signature of {client_id}",
            f"hmac_key (or hmac_key_file) must hold the key of user {client_id} on this "
            f"coordinator; an admin can check it exists (dffmpeg-admin user show "
            f"{client_id}) and issue a new key (dffmpeg-admin user rotate-key {client_id})",
        )
    except (ApiError, Unreachable) as exc:
        return _failed("credentials", title, str(exc), "upgrade the coordinator, or retry")
    return _passed("credentials", title, f"signed in as {client_id}")


def check_role(found: Findings) -> Result:
    title = "role may submit jobs"
    role = str(found.identity.get("role"))
    if role in ("client", "admin"):
        return _passed("role", title, f"role {role}")
    client_id = found.identity.get("client_id")
    return _failed(
        "role",
        title,
        f"{client_id} has the role {role}, which cannot submit jobs",
        "use an identity with the client role: dffmpeg-admin user add NAME --role client",
    )


def servers(workers: list[dict[str, Any]], variable: str) -> list[str]:
    """Online, undrained workers with ffmpeg that offer ``variable``."""
    return [
        w["worker_id"]
        for w in workers
        if variable in w.get("path_variables", [])
        and "ffmpeg" in w.get("binaries", {})
        and not w.get("drained")
    ]


def check_paths(found: Findings) -> Iterator[Result]:
    title = "path variable served by an online worker"
    assert found.api is not None and found.config is not None
    try:
        found.workers = found.api.call("GET", "/doctor/workers")["workers"]
    except (ApiError, Unreachable) as exc:
        yield _failed("paths", title, str(exc), "retry; upgrade the coordinator if it persists")
        return
    if not found.workers:
        yield _failed(
            "paths",
            title,
            "no worker is online",
            "start dffmpeg-worker on the machines that run ffmpeg (docs/setup.md)",
        )
        return
    if not found.config.paths:
        yield _passed("paths", title, "this config maps no path variables")
    for variable, root in sorted(found.config.paths.items()):
        serving = servers(found.workers, variable)
        if serving:
            detail = f"${variable} ({root}) served by {', '.join(serving)}"
            yield _passed("paths", title, detail, variable=variable)
        else:
            yield _failed(
                "paths",
                title,
                f"no online worker offers ${variable}",
                f"give a worker 'paths: {{{variable}: /its/root}}' pointing at the same "
                f"storage as {root}, and make sure that root is mounted (a worker offers a "
                "variable only while its root is present)",
                variable=variable,
            )


def check_round_trips(found: Findings) -> Iterator[Result]:
    title = "round trip through a worker"
    assert found.api is not None and found.config is not None
    for variable, root in sorted(found.config.paths.items()):
        for worker in servers(found.workers, variable):
            trip = round_trip(found.api, worker, variable, root)
            context = {"variable": variable, "worker": worker}
            if trip.ok:
                yield _passed("roundtrip", title, trip.detail, **context)
            else:
                yield _failed("roundtrip", title, trip.detail, trip.fix or "", **context)


def check_versions(found: Findings) -> Result:
    title = "same ffmpeg on every worker that serves us"
    assert found.config is not None
    variables = list(found.config.paths)
    serving = {w for v in variables for w in servers(found.workers, v)} if variables else None
    workers = [w for w in found.workers if serving is None or w["worker_id"] in serving]
    if not workers:
        return _skipped("versions", title, "no worker serves this machine's path variables")
    differences = []
    for binary in sorted({b for w in workers for b in w.get("binaries", {})}):
        having = [w for w in workers if binary in w.get("binaries", {})]
        builds: dict[tuple[str, str], list[str]] = {}
        for w in having:
            info = w["binaries"][binary]
            key = (str(info.get("version")), str(info.get("capabilities")))
            builds.setdefault(key, []).append(w["worker_id"])
        if len(builds) > 1:
            groups = "; ".join(
                f"{', '.join(ids)}: {version or '?'} (capabilities {caps or '?'})"
                for (version, caps), ids in sorted(builds.items())
            )
            differences.append(f"{binary} differs: {groups}")
        if len(having) < len(workers):
            lacking = sorted({w["worker_id"] for w in workers} - {w["worker_id"] for w in having})
            differences.append(f"{binary} missing on {', '.join(lacking)}")
    if differences:
        return _failed(
            "versions",
            title,
            "; ".join(differences),
            "install the same ffmpeg build on every worker (the same package and version), "
            "or give the odd workers a label and route jobs with require_labels",
        )
    names = ", ".join(cell(w["worker_id"]) for w in workers) or "none"
    version = next(
        (str(w["binaries"]["ffmpeg"].get("version")) for w in workers if "ffmpeg" in w["binaries"]),
        "?",
    )
    return _passed("versions", title, f"{version} on {names}")


def run(explicit: str | None, emit: Callable[[Result], None]) -> list[Result]:
    """Run every check in order, handing each result to ``emit`` as it comes."""
    found = Findings()
    results: list[Result] = []

    def add(result: Result) -> bool:
        results.append(result)
        emit(result)
        return result.ok is True

    try:
        if not add(check_config(explicit, found)):
            return results
        later = [
            ("clock", "clock within the signing window"),
            ("credentials", "credentials accepted"),
            ("role", "role may submit jobs"),
            ("paths", "path variables served by an online worker"),
            ("roundtrip", "round trips through the workers"),
            ("versions", "same ffmpeg on every worker that serves us"),
        ]
        if not add(check_reachable(found)):
            for check, title in later:
                add(_skipped(check, title, "the coordinator is not reachable"))
            return results
        add(check_clock(found))
        if not add(check_credentials(found)):
            for check, title in later[2:]:
                add(_skipped(check, title, "the credentials were not accepted"))
            return results
        add(check_role(found))
        paths_ok = all([add(r) for r in check_paths(found)])
        if found.workers:
            for result in check_round_trips(found):
                add(result)
            add(check_versions(found))
        elif not paths_ok:
            for check, title in later[4:]:
                add(_skipped(check, title, "no worker is online"))
        return results
    finally:
        if found.api is not None:
            found.api.close()


def line(result: Result) -> str:
    mark = {True: "\u2713", False: "\u2717", None: "-"}[result.ok]
    where = " ".join(f"{k} {v}" for k, v in result.context.items())
    text = f"{mark} {result.title}{' (' + where + ')' if where else ''}: {result.detail}"
    if result.fix:
        text += f"\n  fix: {result.fix}"
    return text
