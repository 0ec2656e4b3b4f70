"""The dashboard's HTTP server: aiohttp on an event loop of its own, in a background thread.

The routes only read (``RunView``); each read runs on one worker thread of the server's own,
so a slow tracker (Redis far away) never blocks the event loop, and reads never run two at a
time. Bound off loopback, every request must carry the token (``?token=`` or
``Authorization: Bearer``), compared in constant time; without it: 401.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from deepgrid.dashboard.view import RunView
from deepgrid.errors import ConfigError

START_TIMEOUT_S = 10.0


def _json(data: Any) -> web.Response:
    # Losses can be inf or nan (a diverging run): JSON has neither, the page shows null as a gap.
    return web.Response(text=json.dumps(_finite(data)), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be an integer"}),
                                 content_type="application/json") from None


class DashboardServer:
    """Serves one master's page and JSON API until ``stop``."""

    def __init__(self, view: RunView, host: str, port: int, token: str | None) -> None:
        self.view, self.host, self.port, self.token = view, host, port, token
        self._page = importlib.resources.files("deepgrid.dashboard").joinpath("page.html").read_text("utf-8")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepgrid-dashboard-read")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> int:
        """Listen (in the background thread) and return the port; raise ConfigError if it cannot."""
        self._thread = threading.Thread(target=self._serve, name="deepgrid-dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise ConfigError(f"The dashboard did not start listening on {self.host}:{self.port} within "
                              f"{START_TIMEOUT_S:.0f} s; pass --no-dashboard to train without it.")
        if self._error is not None:
            raise ConfigError(f"The dashboard cannot listen on {self.host}:{self.port} ({self._error}); "
                              "pass --dashboard HOST:0 for a free port, or --no-dashboard.") from None
        return self.port

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as e:  # reported to start(), which raises one clear line
            self._error = e
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _listen(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._index)
        routes: dict[str, Callable[[web.Request], Any]] = {
            "/api/run": lambda r: self.view.run(),
            "/api/snapshot": lambda r: self.view.snapshot(),
            "/api/page": lambda r: self.view.page(_int_param(r, "since", -1), _int_param(r, "events_since", 0)),
            "/api/statetracker/workers": lambda r: self.view.workers(),
            "/api/statetracker/phase": lambda r: self.view.phase(),
            "/api/statetracker/jobs": lambda r: self.view.jobs(),
            "/api/statetracker/minibatch": lambda r: self.view.minibatch(),
            "/api/statetracker/metrics": lambda r: self.view.metrics(_int_param(r, "since", -1)),
            "/api/statetracker/events": lambda r: self.view.events(_int_param(r, "since", 0),
                                                                  _int_param(r, "limit", 200)),
        }
        for path, read in routes.items():
            app.router.add_get(path, self._reader(read))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the free port the system chose for port 0

    def stop(self) -> None:
        """Stop serving; safe to call twice. Reads under way finish in their own thread."""
        loop, self._loop = self._loop, None
        if loop is not None and self._thread is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- requests --------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if self.token is not None and not self._authorised(request):
            return web.json_response({"error": "this dashboard needs its token: open the URL the master printed "
                                               "(?token=...) or send Authorization: Bearer TOKEN"}, status=401)
        return await handler(request)

    def _authorised(self, request: web.Request) -> bool:
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=self._page, content_type="text/html",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                     "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"})

    def _reader(self, read: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            data = await asyncio.get_running_loop().run_in_executor(self._pool, read, request)
            return _json(data)
        return handle
