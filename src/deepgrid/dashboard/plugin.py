"""The dashboard as one of the master's callbacks: started at the end of ``setup``, stopped first
thing in ``shutdown``.

Where it is found: the URL (never the token) goes into the run record (``dashboard_url``: the
status file locally, Redis for another machine), and ``runs/<job>/dashboard.json`` (mode 0600)
holds the URL and the token for ``deepgrid status`` on this machine, as Jupyter's runtime files
do. Bound off loopback it asks for a token, printed once with the URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepgrid.config.dashboard_address import DEFAULT, is_loopback, split_address, url_host
from deepgrid.dashboard.accuracy import AccuracyWorker
from deepgrid.dashboard.view import RunView
from deepgrid.distributed.metrics_file import MetricsRecorder, epoch_accuracy
from deepgrid.errors import ConfigError, DeepgridError
from deepgrid.state.status import status_path

if TYPE_CHECKING:
    from deepgrid.distributed.callbacks import RoundReport
    from deepgrid.distributed.runner import ActorNetworkRunner
    from deepgrid.models.base import Phase

DISCOVERY_FILE = "dashboard.json"


class Dashboard:
    """Serves a master's page and JSON API while it trains (see ``deepgrid.dashboard.server``)."""

    def __init__(self, runner: ActorNetworkRunner, address: str) -> None:
        self.runner = runner
        self.host, self.port = split_address(address)
        self.token = None if is_loopback(self.host) else secrets.token_urlsafe(24)
        self.view = RunView(runner)
        self.url = ""
        self._server: Any = None
        self._file: Path | None = None
        self._accuracy: AccuracyWorker | None = None  # with a validation set

    @property
    def token_url(self) -> str:
        """The URL to open: with ``?token=`` when one is needed."""
        return f"{self.url}?token={self.token}" if self.token else self.url

    def start(self) -> None:
        try:
            from deepgrid.dashboard.server import DashboardServer  # aiohttp: only when a dashboard runs
        except ImportError as e:
            raise ConfigError(f"The dashboard needs aiohttp ({e}), which ray[default] brings: "
                              "pip install 'ray[default]', or pass --no-dashboard.") from None

        self._server = DashboardServer(self.view, self.host, self.port, self.token)
        self.port = self._server.start()
        shown = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        self.url = self.view.url = f"http://{url_host(shown)}:{self.port}/"
        events = self.runner.events
        events.say(f"deepgrid: dashboard at {self.token_url}")  # the token printed once, never recorded
        events(f"dashboard at {self.url}", "dashboard", quiet=True)
        self._record(self.url)
        self._write_discovery_file()
        if self.runner.validation is not None:
            try:
                factory = self.runner.group.spec.factory  # what the workers build their models with
                self._accuracy = AccuracyWorker(factory, self.runner.validation, self.view.set_accuracy)
            except Exception as e:  # no model to be had: the chart shows the loss alone
                events(f"deepgrid: the dashboard shows no validation accuracy ({e})", quiet=True)

    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None:
        self.view.on_round_end(master, report)

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.stop()
        self._record("")
        if self._accuracy is not None:
            self._accuracy.stop()
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(self._file.read_text()).get("url") == self.url:  # not a newer master's
                    self._file.unlink()

    def _record(self, url: str) -> None:
        tracker = self.runner.tracker
        if tracker is None or getattr(tracker, "unreachable", False):
            return
        try:
            # Clearing it must not move the run's clock: a finished run's elapsed time ends at updated_at.
            kept = {} if url else {"updated_at": tracker.run_state().updated_at}
            tracker.update_run(dashboard_url=url, **kept)
        except DeepgridError as e:  # the page works without it; only `deepgrid status` cannot find it
            self.runner.events(f"deepgrid: could not record the dashboard's URL in the state tracker: {e}")

    def _write_discovery_file(self) -> None:
        try:
            path = status_path(self.runner.conf.job_name).with_name(DISCOVERY_FILE)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{DISCOVERY_FILE}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the token: owner only
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"url": self.url, "token": self.token, "pid": os.getpid()}, f)
            os.replace(tmp, path)
            self._file = path
        except OSError as e:
            self.runner.events(f"deepgrid: could not write {DISCOVERY_FILE} ({e}); `deepgrid status` "
                               "reads the status file instead")

    def on_epoch_end(self, master: ActorNetworkRunner, phase: Phase, epoch: int, loss: float,
                     validation: float | None) -> None:
        """After an epoch and its validation: the loss now, the accuracy from the background."""
        if validation is None:
            return
        index = self.view.record_validation(phase.name, epoch, validation)
        if any(isinstance(callback, MetricsRecorder) for callback in master.callbacks):
            # The metrics file needs the accuracy too, on the training thread: share its one pass.
            self.view.set_accuracy(index, epoch_accuracy(master, phase, epoch))
        elif self._accuracy is not None:
            self._accuracy.submit(index, master.params)


def start_dashboard(runner: ActorNetworkRunner) -> Dashboard | None:
    """Start the dashboard the runner's Conf asks for and add it to the runner's callbacks.

    A dashboard the user asked for that cannot listen (a port in use) stops the run before it
    trains; the default one warns and the run goes on without it.
    """
    address = runner.conf.dashboard
    if address is None:
        return None
    dashboard = Dashboard(runner, address)
    try:
        dashboard.start()
    except DeepgridError as e:
        dashboard.stop()
        if address != DEFAULT:
            raise
        runner.events(f"deepgrid: warning: no dashboard ({e})")
        return None
    runner.callbacks.append(dashboard)
    return dashboard


def stop_dashboard(runner: ActorNetworkRunner) -> None:
    """Stop the runner's dashboard, if it has one (safe to call twice)."""
    for callback in runner.callbacks:
        if isinstance(callback, Dashboard):
            callback.stop()
