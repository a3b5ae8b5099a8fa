"""Real jobs submitted with a client key, as an attacker would, against real bubblewrap.

Two clusters: ``guarded`` runs the default worker config, so the argument checks refuse
the obvious attacks with one clear line; ``bare`` switches those checks off where it can
(``allow_unmapped_paths``, code-loading filters allowed), so that the sandbox alone stands
between the job and the host. Every test asserts the evidence: the outside file absent,
the secret bytes not on stdout, no proof file written by a loaded library, no connection
received.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cluster, start_cluster
from tests.helpers import require

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
pytestmark = pytest.mark.timeout(120)


def _bwrap() -> None:
    require(shutil.which("bwrap") is not None, "bubblewrap (bwrap)")


class Host:
    """What lies outside every root: a secret, a place to write to, a proof path."""

    def __init__(self, root: Path) -> None:
        self.outside = root / "outside"
        self.outside.mkdir()
        self.token = secrets.token_hex(16)
        self.secret = self.outside / "secret.txt"
        self.secret.write_text(f"SECRET {self.token}\n")
        self.target = self.outside / "written"  # must never appear


def _library(folder: Path, proof: Path) -> Path:
    """A shared library whose constructor writes ``proof`` when anything loads it."""
    require(shutil.which("gcc") is not None, "gcc")
    source = folder / "evil.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void run(void) {\n"
        f'  FILE *f = fopen("{proof}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n'
        "}\n"
    )
    library = folder / "evil.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, timeout=60
    )
    source.unlink()
    return library


def _cluster(
    factory: pytest.TempPathFactory, media_dir: Path, name: str, **worker: object
) -> Iterator[tuple[Cluster, Host]]:
    _bwrap()
    root = factory.mktemp(name)
    media = root / "media"
    media.mkdir()
    shutil.copy(media_dir / "clip.mp4", media / "clip.mp4")
    library = root / "library"
    library.mkdir()
    shutil.copy(media_dir / "clip.mp4", library / "clip.mp4")
    host = Host(root)
    worker_media = root / "worker-media"
    settings: dict[str, object] = {
        "paths": {
            "Media": str(worker_media),
            "Library": {"path": str(library), "writable": False},
        },
        **worker,
    }
    client = {
        "paths": {"Media": str(root / "client-media"), "Library": str(library)},
        # The drop-in forwards these; the worker must drop every one of them.
        "forward_env": ["LANG", "FFREPORT", "LD_PRELOAD", "FREI0R_PATH", "LADSPA_PATH"],
    }
    for cluster in start_cluster(
        root, media, worker_extra=settings, client_extra=client, worker_key_file=True
    ):
        yield cluster, host


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> Iterator[tuple[Cluster, Host]]:
    yield from _cluster(tmp_path_factory, media_dir, "guarded")


@pytest.fixture(scope="module")
def bare(
    tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> Iterator[tuple[Cluster, Host]]:
    yield from _cluster(
        tmp_path_factory,
        media_dir,
        "bare",
        allow_unmapped_paths=True,
        allow_filters=["ladspa", "frei0r", "lv2"],
    )


def run(
    cluster: Cluster, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    extra = dict(env or {})
    if cwd is not None:
        extra["PWD"] = str(cwd)
    return subprocess.run(
        [cluster.dropin("ffmpeg"), "-hide_banner", *args],
        env={**cluster.env(), **extra},
        cwd=cwd,
        capture_output=True,
        timeout=90,
    )


def dump(source: str) -> list[str]:
    """Arguments that copy the bytes ``source`` reads to stdout."""
    return ["-f", "data", "-i", source, "-map", "0", "-c", "copy", "-f", "data", "-"]


def assert_secret_kept(host: Host, result: subprocess.CompletedProcess[bytes]) -> None:
    assert host.token.encode() not in result.stdout
    assert host.token.encode() not in result.stderr


def assert_refused(
    cluster: Cluster, result: subprocess.CompletedProcess[bytes], *words: str
) -> None:
    """Exit 202 with one ``dffmpeg:`` line naming what was refused, no worker root in it."""
    assert result.returncode == 202, result.stderr
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dffmpeg: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    assert str(cluster.worker_media) not in lines[0]


# -- reading outside every root -------------------------------------------------------------


def _script(source: str) -> str:
    graph = f"amovie={source}:f=u8".encode()
    return "data:text/plain;base64," + base64.b64encode(graph).decode()


READS = {
    "plain": lambda s: dump(s),
    "file-prefix": lambda s: dump(f"file:{s}"),
    "concat-protocol": lambda s: dump(f"concat:{s}|{s}"),
    "cache": lambda s: dump(f"cache:{s}"),
    "async": lambda s: dump(f"async:{s}"),
    "subfile": lambda s: dump(f"subfile,,start,0,end,0,,:{s}"),
    "amovie-escaped": lambda s: ["-f", "lavfi", "-i", f"amovie=\\{s}:f=u8", "-f", "u8", "-"],
    "filter-script-data": lambda s: [
        *("-f", "lavfi", "-i", "anullsrc=d=0.1"),
        *("-filter_complex_script", _script(s), "-f", "u8", "-"),
    ],
}


@pytest.mark.parametrize("how", sorted(READS))
def test_reads_outside_the_roots_see_nothing(bare: tuple[Cluster, Host], how: str) -> None:
    cluster, host = bare
    args = READS[how](str(host.secret))
    # The payload is real: a local ffmpeg hands the secret over.
    control = subprocess.run([FFMPEG, "-v", "error", *args], capture_output=True, timeout=60)
    assert host.token.encode() in control.stdout, control.stderr
    result = run(cluster, *args)
    assert_secret_kept(host, result)
    assert result.returncode != 0


def test_the_workers_key_file_cannot_be_read(bare: tuple[Cluster, Host]) -> None:
    cluster, _ = bare
    key_file = cluster.root / "worker.key"
    key = key_file.read_text().strip().encode()
    for source in (str(key_file), str(cluster.worker_config)):
        result = run(cluster, *dump(source))
        assert key not in result.stdout and key not in result.stderr
        assert result.returncode != 0


def test_a_symlink_inside_a_root_leads_nowhere(bare: tuple[Cluster, Host]) -> None:
    cluster, host = bare
    (cluster.worker_media / "to-secret").symlink_to(host.secret)
    (cluster.worker_media / "to-key").symlink_to(cluster.root / "worker.key")
    key = (cluster.root / "worker.key").read_text().strip().encode()
    for link in ("to-secret", "to-key"):
        result = run(cluster, *dump(str(cluster.client_media / link)))
        assert_secret_kept(host, result)
        assert key not in result.stdout
        assert result.returncode != 0


def test_a_concat_list_written_by_an_earlier_job_is_confined(bare: tuple[Cluster, Host]) -> None:
    cluster, host = bare
    listing = f"ffconcat version 1.0\nfile '{host.secret}'\n"
    data = "data:text/plain;base64," + base64.b64encode(listing.encode()).decode()
    written = run(cluster, *dump(data)[:-1], "-y", str(cluster.client_media / "list.txt"))
    assert written.returncode == 0, written.stderr
    assert (cluster.worker_media / "list.txt").read_text() == listing
    result = run(
        cluster, "-f", "concat", "-safe", "0", "-i", str(cluster.client_media / "list.txt"),
        "-map", "0", "-c", "copy", "-f", "data", "-",
    )  # fmt: skip
    assert_secret_kept(host, result)
    assert result.returncode != 0


def test_a_climbing_working_directory_is_refused(guarded: tuple[Cluster, Host]) -> None:
    cluster, host = guarded
    climb = cluster.client_media / ".." / "outside"
    result = run(cluster, *dump("secret.txt"), cwd=climb)
    assert_secret_kept(host, result)
    assert_refused(cluster, result, "working directory", "outside every mapped root")


# -- writing outside the writable roots -----------------------------------------------------


def test_writes_outside_the_roots_leave_no_file(bare: tuple[Cluster, Host]) -> None:
    cluster, host = bare
    clip = str(cluster.client_media / "clip.mp4")
    attempts = {
        "output": ["-i", clip, "-t", "0.1", "-f", "mpegts", "-y", str(host.target)],
        "tee": ["-i", clip, "-t", "0.1", "-map", "0", "-c", "copy", "-f", "tee",
                f"[f=mpegts]{host.target}"],
        "ametadata": ["-f", "lavfi", "-i", "sine=d=0.2",
                      "-af", f"ametadata=mode=print:file=\\{host.target}", "-f", "null", "-"],
    }  # fmt: skip
    for how, args in attempts.items():
        # The payload is real: a local ffmpeg writes the file.
        subprocess.run([FFMPEG, "-v", "error", *args], capture_output=True, timeout=60)
        assert host.target.exists(), how
        host.target.unlink()
        run(cluster, *args)
        assert not host.target.exists(), how


def test_ffreport_in_the_environment_writes_nothing(bare: tuple[Cluster, Host]) -> None:
    cluster, host = bare
    report = host.outside / "report.log"
    result = run(
        cluster, "-f", "lavfi", "-i", "nullsrc=d=0.1", "-f", "null", "-",
        env={"FFREPORT": f"file={report}:level=32"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not report.exists()
    assert not list(cluster.worker_media.glob("*.log"))


def test_an_attachment_named_by_the_container_stays_in_the_roots(
    bare: tuple[Cluster, Host],
) -> None:
    cluster, host = bare
    font = next(Path("/usr/share/fonts").rglob("*.ttf"), None)
    if font is None:
        pytest.skip("no TrueType font under /usr/share/fonts")
    work = cluster.worker_media / "attach"
    work.mkdir()
    mkv = work / "evil.mkv"
    made = subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "nullsrc=d=0.1", "-attach", str(font),
         "-metadata:s:t", "mimetype=application/x-truetype-font",
         "-metadata:s:t", f"filename={host.target}", str(mkv)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    client_dir = cluster.client_media / "attach"
    run(
        cluster, "-dump_attachment:t", "", "-i", str(client_dir / "evil.mkv"),
        "-t", "0", "-f", "null", "-", cwd=client_dir,
    )  # fmt: skip
    assert not host.target.exists()


def test_a_read_only_root_stays_unchanged(bare: tuple[Cluster, Host]) -> None:
    cluster, _ = bare
    library = cluster.root / "library"
    result = run(
        cluster, "-i", str(library / "clip.mp4"), "-t", "0.1", "-y", str(library / "new.ts")
    )
    assert result.returncode != 0
    assert sorted(p.name for p in library.iterdir()) == ["clip.mp4"]
    # ... while the writable root takes the same output.
    ok = run(cluster, "-i", str(library / "clip.mp4"), "-t", "0.1", "-y",
             str(cluster.client_media / "new.ts"))  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (cluster.worker_media / "new.ts").stat().st_size > 0


# -- loading code -------------------------------------------------------------------------


def _plant_library(cluster: Cluster) -> tuple[Path, Path]:
    """Compile a library and have a real job write it into the writable root."""
    build = cluster.root / "build"
    build.mkdir(exist_ok=True)
    proof = cluster.worker_media / f"proof-{secrets.token_hex(4)}"
    library = _library(build, proof)
    data = "data:application/octet-stream;base64," + base64.b64encode(library.read_bytes()).decode()
    name = f"x-{secrets.token_hex(4)}.so"
    written = run(cluster, *dump(data)[:-1], "-y", str(cluster.client_media / name))
    assert written.returncode == 0, written.stderr
    planted = cluster.worker_media / name
    assert planted.read_bytes() == library.read_bytes()
    # The library works: loaded outside any sandbox it writes its proof.
    check = subprocess.run(
        [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "sine=d=0.1",
         "-af", f"ladspa=file={library}", "-f", "null", "-"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert proof.exists(), check.stderr
    proof.unlink()
    return planted, proof


def test_a_library_written_into_a_root_is_never_loaded(bare: tuple[Cluster, Host]) -> None:
    cluster, _ = bare
    planted, proof = _plant_library(cluster)
    shown = str(cluster.client_media / planted.name)
    attempts = {
        "ladspa": ["-f", "lavfi", "-i", "sine=d=0.1", "-af", f"ladspa=file={shown}",
                   "-f", "null", "-"],
        "frei0r": ["-f", "lavfi", "-i", "nullsrc=d=0.1", "-vf",
                   f"frei0r=filter_name={shown}", "-f", "null", "-"],
    }  # fmt: skip
    for how, args in attempts.items():
        result = run(cluster, *args)
        assert result.returncode != 0, how
        assert not proof.exists(), how
    # The attacker's own program sends the variables (a drop-in would load the
    # library into itself first).
    preload = submit_raw(
        cluster,
        ["-f", "lavfi", "-i", "sine=d=0.1", "-af", "ladspa=file=evil", "-f", "null", "-"],
        {
            "LD_PRELOAD": str(planted),
            "LADSPA_PATH": str(cluster.worker_media),
            "FREI0R_PATH": str(cluster.worker_media),
        },
    )
    assert preload.returncode != 0  # no "evil" plugin found: LADSPA_PATH was dropped
    assert not proof.exists()


def submit_raw(
    cluster: Cluster, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """Submit a job as a client program of the attacker's would: any ``env`` at all."""
    script = (
        "import sys, json\n"
        "from client.api import Api\n"
        "from client.submit import build_request, run\n"
        "from dffmpeg.config import load_client\n"
        "config = load_client()\n"
        "request = build_request(config, 'ffmpeg', json.loads(sys.argv[1]))\n"
        "request.env = json.loads(sys.argv[2])\n"
        "sys.exit(run(Api.from_config(config), request, stdin_fd=None))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(args), json.dumps(env)],
        env=cluster.env(),
        capture_output=True,
        timeout=90,
    )


def test_code_loading_filters_are_refused_by_default(guarded: tuple[Cluster, Host]) -> None:
    cluster, _ = guarded
    for graph, name in (("ladspa=file=/x.so", "ladspa"), ("volume=1,frei0r=glow", "frei0r")):
        result = run(cluster, "-f", "lavfi", "-i", "sine=d=0.1", "-af", graph, "-f", "null", "-")
        assert_refused(cluster, result, name, "loads code")


# -- the network ------------------------------------------------------------------------------


class Listener:
    """A TCP server on 127.0.0.1 that counts the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def test_network_urls_are_refused_and_reach_nobody(
    guarded: tuple[Cluster, Host], listener: Listener
) -> None:
    cluster, _ = guarded
    clip = str(cluster.client_media / "clip.mp4")
    port = listener.port
    for args in (
        ["-i", f"http://127.0.0.1:{port}/a.mp4", "-f", "null", "-"],
        ["-i", f"{cluster.url}/health", "-f", "null", "-"],
        ["-i", clip, "-c", "copy", "-f", "mpegts", f"tcp://127.0.0.1:{port}"],
        ["-f", "lavfi", "-i", f"amovie=tcp\\\\://127.0.0.1\\\\:{port}", "-f", "null", "-"],
    ):
        result = run(cluster, *args)
        assert_refused(cluster, result, "network access is not allowed")
    assert listener.connections == 0


def test_a_playlist_in_a_root_cannot_reach_the_network(
    bare: tuple[Cluster, Host], listener: Listener
) -> None:
    """The argument check cannot see inside a playlist: the network namespace holds."""
    cluster, _ = bare
    playlist = cluster.worker_media / "live.m3u8"
    playlist.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n"
        f"http://127.0.0.1:{listener.port}/segment.ts\n#EXT-X-ENDLIST\n"
    )
    result = run(
        cluster, "-protocol_whitelist", "file,http,tcp", "-i",
        str(cluster.client_media / "live.m3u8"), "-f", "null", "-",
    )  # fmt: skip
    assert result.returncode != 0
    assert listener.connections == 0
