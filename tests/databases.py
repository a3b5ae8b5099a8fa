"""Throw-away databases on SQLite, MariaDB and PostgreSQL for tests and benchmarks.

Which databases the ``database_url`` fixture covers comes from ``--databases`` or the
environment variable ``DFFMPEG_TEST_DATABASES`` (comma-separated; default ``sqlite``).
Every server database is created under a unique name and dropped afterwards, so
parallel test runs on one server never collide.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.helpers import free_port, port_open, require

KINDS = ("sqlite", "mariadb", "postgresql")
ENV = "DFFMPEG_TEST_DATABASES"

# Server, admin URL (connects to an existing database) and URL template per backend.
SERVERS = {
    "mariadb": (
        3306,
        "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4",
        "mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4",
    ),
    "postgresql": (
        5432,
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        "postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
    ),
}


def selected(option: str | None = None) -> list[str]:
    raw = option or os.environ.get(ENV) or "sqlite"
    kinds = [k.strip() for k in raw.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown database kinds {unknown}; known: {', '.join(KINDS)}")
    return kinds


def available(kind: str) -> bool:
    return kind == "sqlite" or port_open("127.0.0.1", SERVERS[kind][0])


def require_database(kind: str) -> None:
    require(available(kind), f"{kind} on 127.0.0.1")


@contextmanager
def fresh_database(kind: str, workdir: Path) -> Iterator[str]:
    """An empty database of ``kind``; yields its SQLAlchemy URL, drops it afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'coordinator.db'}"
        return
    require_database(kind)
    _port, admin_url, template = SERVERS[kind]
    name = f"dffmpeg_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield template.format(name=name)
        finally:
            drop = f"DROP DATABASE IF EXISTS {name}"
            with admin.connect() as conn:
                if kind == "postgresql":
                    drop += " WITH (FORCE)"  # coordinator processes may still be connected
                else:
                    # A connection left in a transaction would block the drop for ever;
                    # fail the test's teardown instead, naming the leak.
                    conn.execute(text("SET SESSION lock_wait_timeout = 20"))
                conn.execute(text(drop))
    finally:
        admin.dispose()


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the test's own, which the test may stop and start."""

    data: Path
    port: int
    run_as: list[str]
    pg_ctl: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", str(self.data), "-w", *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._ctl("-o", options, "-l", str(self.data / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


def postgres_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """initdb into a fresh directory and start a server on a free port; stopped and
    deleted afterwards. The shared PostgreSQL on 5432 is never touched."""
    binaries = postgres_binaries()
    require(binaries is not None, "PostgreSQL server binaries (initdb, pg_ctl)")
    assert binaries is not None
    run_as: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="dffmpeg-pg-"))
    if os.getuid() == 0:  # the server refuses to run as root
        account = pwd.getpwnam("postgres")
        os.chown(data, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    server = PrivatePostgres(data, free_port(), run_as, str(binaries / "pg_ctl"))
    try:
        subprocess.run(
            [*run_as, str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        server.start()
        try:
            yield server
        finally:
            with suppress(subprocess.SubprocessError):
                server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


@dataclass
class PrivateMariaDB:
    """A MariaDB server of the test's own, which the test may stop and start."""

    root: Path
    port: int
    server: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/dffmpeg?charset=utf8mb4"

    def start(self) -> None:
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.server,
                "--no-defaults",
                f"--datadir={self.root / 'data'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.root / 'sock'}",
                f"--pid-file={self.root / 'pid'}",
                "--user=mysql",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd did not start: {self.root / 'server.log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # a normal shutdown: connections are closed, data flushed
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """mariadb-install-db into a fresh directory and a server on a free port, with a
    ``dffmpeg`` database; stopped and deleted afterwards. The shared MariaDB on 3306 is
    never touched."""
    install, server = shutil.which("mariadb-install-db"), shutil.which("mariadbd")
    if server is None and os.path.exists("/usr/sbin/mariadbd"):
        server = "/usr/sbin/mariadbd"
    require(install is not None and server is not None, "MariaDB server binaries")
    assert install is not None and server is not None
    require(os.getuid() == 0, "root (to run mariadbd as the mysql user)")
    root = Path(tempfile.mkdtemp(prefix="dffmpeg-mariadb-"))
    account = pwd.getpwnam("mysql")
    os.chown(root, account.pw_uid, account.pw_gid)
    database = PrivateMariaDB(root, free_port(), server)
    try:
        subprocess.run(
            [install, f"--datadir={root / 'data'}", "--user=mysql",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        database.start()
        try:
            admin = create_engine(
                f"mysql+pymysql://root@127.0.0.1:{database.port}/mysql",
                isolation_level="AUTOCOMMIT",
            )
            with admin.connect() as conn:
                conn.execute(text("CREATE DATABASE dffmpeg CHARACTER SET utf8mb4"))
            admin.dispose()
            yield database
        finally:
            database.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
