"""An https:// coordinator behind a certificate from a CA of the test's own.

Debian's nginx terminates TLS in front of a real coordinator (the shipped server block,
with ``listen ... ssl`` and the test's certificate): a worker and a drop-in that trust
the CA (``ca_file``) run a real job over it; one without ``ca_file`` (the system's CAs)
and one trusting another CA refuse the coordinator; where nginx asks for a client
certificate, only a party with ``client_cert_file`` gets in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Api, Tls, Unreachable
from tests.helpers import (
    free_port,
    port_open,
    process_env,
    require,
    running,
    wait_until,
    write_yaml,
)
from tests.lifecycle_cluster import Coordinator, coordinator
from tests.test_nginx import nginx_config
from tests.test_transport_tls import make_certificates

pytestmark = pytest.mark.timeout(180)


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


def client_certificate(root: Path) -> tuple[Path, Path]:
    """A client key and certificate signed by the CA in ``root``."""
    openssl(root, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=dffmpeg client",
            "-keyout", "client.key", "-out", "client.csr")  # fmt: skip
    openssl(root, "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-out", "client.pem")  # fmt: skip
    return root / "client.pem", root / "client.key"


def tls_site(root: Path, port: int, upstream: str, ca: Path, cert: Path, key: Path) -> Path:
    """The shipped nginx config, listening with TLS (and a second, client-verifying port)."""
    config = nginx_config(root, port, upstream)
    site = (root / "site.conf").read_text()
    tls = (
        f"listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};"
    )
    site, n = re.subn(rf"listen 127\.0\.0\.1:{port};", tls, site)
    assert n == 1
    # The same server once more, on the next port, asking for a client certificate.
    server = site[site.index("server {") :]
    verified = server.replace(
        f"listen 127.0.0.1:{port} ssl;",
        f"listen 127.0.0.1:{port + 1} ssl;\n    ssl_client_certificate {ca};\n"
        "    ssl_verify_client on;",
    )
    (root / "site.conf").write_text(site + "\n" + verified)
    return config


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, str, Path]]:
    require(shutil.which("openssl") is not None, "openssl")
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    require(nginx is not None, "nginx (scripts/install.sh --test installs it)")
    assert nginx is not None
    root = tmp_path_factory.mktemp("tls")
    certs = root / "certs"
    certs.mkdir()
    ca, cert, key = make_certificates(certs)
    with coordinator(root, trusted_proxies=["127.0.0.1/32"]) as coord:
        port = free_port()
        while port_open("127.0.0.1", port + 1):
            port = free_port()
        config = tls_site(root, port, coord.url.removeprefix("http://"), ca, cert, key)
        check = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode()
        with running([nginx, "-c", str(config)], root / "nginx.out"):
            wait_until(lambda: port_open("127.0.0.1", port + 1), timeout=20)
            yield coord, f"https://127.0.0.1:{port}", certs


def dropin(root: Path, config: Path) -> list[str]:
    bin_dir = root / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "ffmpeg").symlink_to(Path(sys.executable).parent / "dffmpeg-proxy")
    return [str(bin_dir / "ffmpeg")]


def run_job(
    coord: Coordinator, name: str, url: str, **tls: str
) -> subprocess.CompletedProcess[bytes]:
    key = coord.user(name, "client")
    config = write_yaml(
        coord.root / f"{name}.yaml",
        {"client_id": name, "hmac_key": key, "coordinator_url": url, **tls},
    )
    return subprocess.run(
        [*dropin(coord.root, config), "-v", "error", "-f", "lavfi", "-i", "nullsrc=d=0.1",
         "-f", "null", "-"],
        env=process_env(DFFMPEG_CLIENT_CONFIG=str(config)),
        capture_output=True,
        timeout=90,
    )  # fmt: skip


def test_parties_that_trust_the_ca_run_a_job_over_tls(
    https: tuple[Coordinator, str, Path],
) -> None:
    coord, url, certs = https
    ca = str(certs / "ca.pem")
    with coord.worker("tls-worker", [], coordinator_url=url, ca_file=ca):
        assert coord.worker_row("tls-worker")["state"] == "online"
        result = run_job(coord, "tls-client", url, ca_file=ca)
        assert result.returncode == 0, result.stderr
        assert result.stderr == b""


def test_without_the_ca_or_with_another_the_coordinator_is_refused(
    https: tuple[Coordinator, str, Path], tmp_path: Path
) -> None:
    coord, url, _ = https
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = make_certificates(other)
    for name, tls in (("no-ca", {}), ("other-ca", {"ca_file": str(other_ca)})):
        result = run_job(coord, name, url, **tls)
        assert result.returncode == 200, (name, result.stderr)
        line = result.stderr.decode().strip()
        assert line.startswith("dffmpeg: coordinator unreachable") and "CERTIFICATE" in line.upper()
        # An API client says the same.
        api = Api(url, name, "x" * 43, timeout=5, tls=Tls(ca_file=tls.get("ca_file")))
        with pytest.raises(Unreachable, match=r"(?i)certificate"):
            api.call("GET", "/doctor/identity")
        api.close()


def test_a_client_certificate_where_the_proxy_asks_for_one(
    https: tuple[Coordinator, str, Path],
) -> None:
    coord, url, certs = https
    verified = re.sub(r":(\d+)$", lambda m: f":{int(m.group(1)) + 1}", url)
    cert, key = client_certificate(certs)
    ca = str(certs / "ca.pem")
    without = run_job(coord, "no-cert", verified, ca_file=ca)
    assert without.returncode != 0
    with coord.worker("tls-worker-2", [], coordinator_url=url, ca_file=ca):
        with_cert = run_job(
            coord, "with-cert", verified, ca_file=ca, client_cert_file=str(cert),
            client_key_file=str(key),
        )  # fmt: skip
        assert with_cert.returncode == 0, with_cert.stderr
