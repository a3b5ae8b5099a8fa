"""``dffmpeg-console --serve``: the same console, in a browser (textual-serve).

Each browser tab that connects gets its own ``dffmpeg-console --config FILE`` process,
run by textual-serve behind a websocket: the same program, the same config, the same
admin identity as in a terminal. The browser gets no other way to the coordinator.

textual-serve itself lets anyone who reaches its port drive the app, and any web page
the operator visits could open its websocket. So this server opens nothing without a
secret printed when it starts:

- ``/?token=SECRET`` (the address printed) sets a cookie (HttpOnly, SameSite=Strict)
  that every later request must carry; without it the page, the websocket and
  downloads answer 403;
- the websocket also requires an ``Origin`` of this very host (no cross-site use);
- it binds 127.0.0.1 unless told otherwise (``--host``), and says so loudly when told;
- the page loads nothing from elsewhere (textual-serve's link to a web font service
  is taken out of it).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from textual_serve.server import Server

COOKIE = "dffmpeg_console"
TOKEN_PARAM = "token"
# textual-serve's page asks a web font service for Roboto Mono; the browser falls back
# to a local monospace font without it.
EXTERNAL_LINK = re.compile(rb'<link[^>]*href="https?://[^"]*"[^>]*/?>\s*', re.S)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def console_command(config: Path) -> str:
    """The shell command textual-serve runs for each browser session."""
    return shlex.join([sys.executable, "-m", "console.cli", "--config", str(config)])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleServer(Server):
    """textual-serve's server with a secret, a same-origin websocket and a local page."""

    def __init__(self, config: Path, host: str, port: int, token: str | None = None) -> None:
        super().__init__(console_command(config), host=host, port=port, title="dffmpeg console")
        self.token = token or secrets.token_urlsafe(24)

    @property
    def address(self) -> str:
        """The address to open, secret included (only the operator sees it)."""
        return f"{self.public_url}/?{TOKEN_PARAM}={self.token}"

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        return app

    def _allowed(self, request: web.Request) -> bool:
        for offered in (request.query.get(TOKEN_PARAM), request.cookies.get(COOKIE)):
            if offered and hmac.compare_digest(offered.encode(), self.token.encode()):
                return True
        return False

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/static/"):
            return await handler(request)  # textual-serve's scripts and styles
        if not self._allowed(request):
            raise web.HTTPForbidden(
                text="dffmpeg console: open the address dffmpeg-console --serve printed"
                " (it carries the secret)\n"
            )
        if request.path == "/ws":
            origin = request.headers.get("Origin", "")
            if origin not in (f"http://{request.host}", f"https://{request.host}"):
                raise web.HTTPForbidden(text="dffmpeg console: the websocket is same-origin\n")
        response = await handler(request)
        if request.path == "/" and isinstance(response, web.Response) and response.body:
            body = response.body
            assert isinstance(body, bytes)
            response.body = self._local_page(body, request.host)
            response.headers["Cache-Control"] = "no-store"
            response.headers["Referrer-Policy"] = "no-referrer"
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        return response

    def _local_page(self, body: bytes, host: str) -> bytes:
        """The page with no outside link, and its addresses on the host the browser used
        (textual-serve writes the bind address, useless to a browser for 0.0.0.0)."""
        body = EXTERNAL_LINK.sub(b"", body)
        websocket = "ws:" + self.public_url.split(":", 1)[1]
        body = body.replace(websocket.encode(), f"ws://{host}".encode())
        return body.replace(self.public_url.encode(), f"http://{host}".encode())

    async def on_startup(self, app: web.Application) -> None:
        # Instead of textual-serve's banner: the one line the operator needs.
        print(f"dffmpeg console in a browser: {self.address}", flush=True)
        if not is_loopback(self.host):
            print(
                f"warning: listening on {self.host}, not only on this machine: anyone who"
                " can reach it and learns the address above has this console's admin"
                " identity. Prefer 127.0.0.1 with an SSH tunnel.",
                flush=True,
            )
        print("Ctrl+C stops it.", flush=True)


def serve(config: Path, host: str, port: int) -> int:
    ConsoleServer(config, host, port).serve()
    return 0
