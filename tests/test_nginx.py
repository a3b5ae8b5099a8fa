"""The shipped nginx configuration (docs/deploy/nginx.conf) in front of a real coordinator.

nginx is Debian's, started by the test with a main configuration of its own (its pid,
logs and temporary files in the test's directory) that includes the shipped server
block, with only its listen port and upstream address changed to free ones.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from client.api import Api
from dffmpeg import signing
from tests.helpers import REPO, free_port, port_open, require, stop, wait_until
from tests.lifecycle_cluster import Coordinator, coordinator

pytestmark = pytest.mark.timeout(120)

SHIPPED = REPO / "docs" / "deploy" / "nginx.conf"


def nginx_config(root: Path, listen: int, upstream: str) -> Path:
    site = SHIPPED.read_text()
    site, listens = re.subn(r"listen 8080;", f"listen 127.0.0.1:{listen};", site)
    site, upstreams = re.subn(r"server 127\.0\.0\.1:8000;", f"server {upstream};", site)
    assert listens == 1 and upstreams == 1, "the shipped config's listen/upstream lines moved"
    (root / "site.conf").write_text(site)
    temp = root / "nginx-temp"
    temp.mkdir()
    main = f"""
daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {root}/site.conf;
}}
"""
    path = root / "nginx.conf"
    path.write_text(main)
    return path


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, str]]:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    require(nginx is not None, "nginx (scripts/install.sh --test installs it)")
    assert nginx is not None
    root = tmp_path_factory.mktemp("nginx")
    with coordinator(
        root, trusted_proxies=["127.0.0.1/32"], transports=["http", "stream"]
    ) as coord:
        port = free_port()
        config = nginx_config(root, port, coord.url.removeprefix("http://"))
        check = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode()
        with (root / "nginx.out").open("ab") as out:
            proc = subprocess.Popen(
                [nginx, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_until(lambda: port_open("127.0.0.1", port), timeout=20)
            yield coord, f"http://127.0.0.1:{port}"
        finally:
            stop(proc)


def key_of(coord: Coordinator, name: str) -> tuple[Api, str]:
    api, config = coord.client(name)
    key: str = yaml.safe_load(config.read_text())["hmac_key"]
    return api, key


def test_signed_requests_pass_through(proxied: tuple[Coordinator, str]) -> None:
    coord, url = proxied
    _, key = key_of(coord, "via-nginx")
    api = Api(url, "via-nginx", key)
    try:
        job = api.call(
            "POST",
            "/jobs",
            json_body={"binary": "ffprobe", "args": ["-version"], "wait_for_worker": True},
        )["job"]
        # Query strings arrive unchanged (they are signed).
        listed = api.call("GET", "/jobs", params={"state": "pending", "limit": 5})
        assert [j["job_id"] for j in listed["jobs"]] == [job["job_id"]]
    finally:
        api.close()


def test_allowed_networks_see_the_client_through_nginx(proxied: tuple[Coordinator, str]) -> None:
    coord, url = proxied
    _, key = key_of(coord, "netbound")
    coord.admin_api.call(
        "PUT", "/users/netbound/networks", json_body={"allowed_networks": ["10.0.0.0/8"]}
    )
    path = "/api/v1/jobs"
    host, port = url.removeprefix("http://").split(":")
    # The client claims an allowed address; nginx replaces the header with the real one.
    headers = {
        **signing.sign_headers("netbound", key, "GET", path, b""),
        "X-Forwarded-For": "10.1.2.3",
    }
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers=headers)
    reply = conn.getresponse()
    assert reply.status == 403, reply.read()
    conn.close()
    coord.admin_api.call(
        "PUT", "/users/netbound/networks", json_body={"allowed_networks": ["127.0.0.1/32"]}
    )
    api = Api(url, "netbound", key)
    try:
        assert api.call("GET", "/jobs")["total"] == 0
    finally:
        api.close()


def test_slow_senders_at_nginx_do_not_stop_the_coordinator(
    proxied: tuple[Coordinator, str],
) -> None:
    _, url = proxied
    host, port = url.removeprefix("http://").split(":")
    stop_event = threading.Event()
    socks: list[socket.socket] = []
    for _ in range(64):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n{")
        socks.append(sock)

    def dribble() -> None:
        while not stop_event.wait(2.0):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b" ")

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        for _ in range(8):
            started = time.monotonic()
            with urllib.request.urlopen(url + "/health", timeout=5) as reply:
                assert reply.status == 200
            assert time.monotonic() - started < 1.0
            time.sleep(0.5)
    finally:
        stop_event.set()
        thread.join(timeout=10)
        for sock in socks:
            sock.close()


def test_streams_pass_through_unbuffered(proxied: tuple[Coordinator, str]) -> None:
    coord, url = proxied
    _, key = key_of(coord, "streamer")
    host, port = url.removeprefix("http://").split(":")
    path = "/api/v1/transport/stream?keys=ping"
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    started = time.monotonic()
    conn.request("GET", path, headers=signing.sign_headers("streamer", key, "GET", path, b""))
    reply = conn.getresponse()
    assert reply.status == 200
    assert reply.readline().strip() == b'{"hello":true}'
    assert time.monotonic() - started < 2.0
    conn.close()
