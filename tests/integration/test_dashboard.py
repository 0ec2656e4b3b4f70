"""The master's dashboard during real runs (real Ray workers, the real aiohttp server, a real browser).

1. The JSON API polled while a run trains: workers, phase and metrics move; a worker SIGKILLed in
   the middle of the run shows as dropped, and the events say its job was re-queued.
2. Bound off loopback, every request needs the token printed with the URL (401 without it).
3. ``deepgrid status --json`` and ``--watch`` read the master's snapshot from its dashboard.
4. Debian's chromium, headless, driven by selenium through /usr/bin/chromedriver (nothing is
   downloaded: selenium-manager is made to fail if anything calls it) opens the page during a run,
   finds the workers in the table, sees the loss chart grow, and saves a screenshot.

The runs are made slow from the master's side: ``Pace`` sleeps after each round until the test
says it has seen enough, then the run finishes at full speed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from deepgrid import Conf
from deepgrid.cli import main
from deepgrid.dashboard.plugin import Dashboard
from deepgrid.distributed.runner import ActorNetworkRunner
from deepgrid.state.status import status_path
from tests.helpers import missing_server
from tests.integration.local_engine import ray_local  # noqa: F401 (an autouse fixture)
from tests.integration.synthetic import TRAIN, mlp_conf

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def conf(**changes: object) -> Conf:
    return mlp_conf(**{"epochs": 3, "validation_fraction": 0.1, **changes})


class Pace:
    """An ``on_round`` hook: each round waits ``round_s`` until ``enough`` is set; ``also`` runs first."""

    def __init__(self, round_s: float = 0.1, also: Any = None) -> None:
        self.round_s, self.also = round_s, also
        self.enough = threading.Event()

    def __call__(self, runner: ActorNetworkRunner) -> None:
        if self.also is not None:
            self.also(runner)
        self.enough.wait(self.round_s)


class Run:
    """A master set up here and trained in a thread; the dashboard answers until ``finish``."""

    def __init__(self, c: Conf, pace: Pace, progress: Any = None) -> None:
        self.pace = pace
        self.runner = ActorNetworkRunner("master", TRAIN, progress=progress or (lambda message: None))
        self.runner.on_round = pace
        self.error: BaseException | None = None
        self.runner.setup(c)
        self.dashboard = next(cb for cb in self.runner.callbacks if isinstance(cb, Dashboard))
        self.thread = threading.Thread(target=self._train, daemon=True)
        self.thread.start()

    def _train(self) -> None:
        try:
            self.runner.train()
        except BaseException as e:  # reported by finish()
            self.error = e

    def get(self, path: str, token: str | None = None) -> Any:
        url = f"http://127.0.0.1:{self.dashboard.port}{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return json.loads(r.read())

    def wait_trained(self, timeout: float = 120) -> None:
        self.pace.enough.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish"
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self.pace.enough.set()
        self.thread.join(120)
        self.runner.shutdown()


def poll_until(what: Any, timeout: float = 60, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not seen within {timeout} s")


def test_the_api_follows_a_run_and_a_killed_worker() -> None:
    killed: list[str] = []

    def kill_one(runner: ActorNetworkRunner) -> None:
        if runner.round == 12 and not killed:  # between rounds: its next job is claimed, then fails
            worker_id = sorted(runner.workers)[0]
            os.kill(runner.tracker.workers()[worker_id].info["pid"], signal.SIGKILL)
            killed.append(worker_id)

    run = Run(conf(workers=3, job_name="dash-api"), Pace(0.1, kill_one))
    try:
        first = poll_until(lambda: (r := run.get("/api/run"))["round"] >= 1 and r)
        assert first["model"] == "mlp" and first["strategy"] == "average" and first["status"] == "training"
        assert first["phases"] == [{"name": "finetune", "epochs": 3, "supervised": True}]
        workers = run.get("/api/statetracker/workers")
        assert workers["live"] == 3 and all(w["state"] == "enabled" for w in workers["workers"])
        phase = run.get("/api/statetracker/phase")
        assert phase["phase"] == "finetune" and phase["epochs"] == 3
        minibatch = run.get("/api/statetracker/minibatch")
        assert minibatch["batch_size"] == 16
        assert minibatch["batches_per_epoch"] == run.runner.train_data.n_batches(16)
        jobs = run.get("/api/statetracker/jobs")
        assert jobs["jobs_per_epoch"] == -(-minibatch["batches_per_epoch"] // 4) and jobs["pending"] >= 0

        # The killed worker: dropped in the table, its job re-queued in the events.
        dropped = poll_until(lambda: [w for w in run.get("/api/statetracker/workers")["workers"]
                                      if w["state"] == "dropped"])
        assert [w["id"] for w in dropped] == killed
        events = run.get("/api/statetracker/events")["events"]
        drop = [e for e in events if e["kind"] == "dropped" and e["worker_id"] == killed[0]]
        assert drop and drop[0]["job_id"] and "re-queued" in drop[0]["message"], events
        assert [e["index"] for e in events] == list(range(len(events)))  # numbered for ?since=
        newer = run.get(f"/api/statetracker/events?since={events[-1]['index']}")["events"]
        assert newer and newer[0]["index"] == events[-1]["index"]
        # What the page asks for each second, in one answer: the same parts as the endpoints above.
        page = run.get(f"/api/page?since=-1&events_since={events[-1]['index']}")
        assert set(page) == {"run", "workers", "jobs", "minibatch", "metrics", "events"}
        assert page["run"]["model"] == "mlp" and [w["id"] for w in page["workers"]["workers"]] == \
            [w["id"] for w in run.get("/api/statetracker/workers")["workers"]]
        assert page["events"]["events"][0]["index"] == events[-1]["index"] and page["metrics"]["rounds"]

        # Metrics move: a later poll has more rounds, and ?since= sends only the new ones.
        metrics = run.get("/api/statetracker/metrics")
        later = poll_until(lambda: (m := run.get(f"/api/statetracker/metrics?since={metrics['last_round']}"))["rounds"] and m)
        assert later["rounds"][0]["round"] == metrics["last_round"] + 1
        assert all(isinstance(e["loss"], float) and e["samples"] > 0 for e in metrics["rounds"])
        assert run.get("/api/run")["round"] > first["round"]

        run.wait_trained()
        done = poll_until(lambda: (r := run.get("/api/run"))["status"] == "done" and r)  # cached <= 0.5 s
        assert done["eta_s"] == 0 and done["jobs_done"] == done["jobs_total"]
        assert done["workers"] == 2
        # The accuracy comes from the dashboard's background thread, a little after the loss.
        final = poll_until(lambda: (m := run.get("/api/statetracker/metrics"))["validation"]
                           and all(v["accuracy"] is not None for v in m["validation"]) and m)
        assert [v["epoch"] for v in final["validation"]] == [0, 1, 2]
        assert all(0 <= v["accuracy"] <= 1 and v["loss"] >= 0 for v in final["validation"])
        assert final["validation"][-1]["accuracy"] > 0.9  # four well-separated blobs
        snapshot = run.get("/api/snapshot")
        assert snapshot["run"]["dashboard_url"] == run.dashboard.url and "dashboard" in snapshot
    finally:
        run.finish()
    # Stopped with the master: its URL is gone from the run record and the port is closed.
    assert run.runner.tracker_snapshot["run"]["dashboard_url"] == ""
    with pytest.raises(OSError):
        run.get("/api/run")


def outward_address() -> str | None:
    """A non-loopback address of this machine, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_off_loopback_every_request_needs_the_token() -> None:
    address = outward_address()
    said: list[str] = []
    runner = ActorNetworkRunner("master", TRAIN, progress=said.append)
    try:
        runner.setup(conf(job_name="dash-token", dashboard=f"{address or '0.0.0.0'}:0"))
        dashboard = next(cb for cb in runner.callbacks if isinstance(cb, Dashboard))
        token = dashboard.token
        assert token and len(token) >= 24
        printed = [line for line in said if token in line]
        assert printed == [f"deepgrid: dashboard at {dashboard.url}?token={token}"]  # once, Jupyter-like
        assert all(token not in e.message for e in runner.events.recent(500))  # never kept or served
        base = f"http://{address or '127.0.0.1'}:{dashboard.port}"
        for path in ("/", "/api/run", "/api/statetracker/workers", "/api/snapshot"):
            for headers, query in (({}, ""), ({}, "?token=wrong"), ({"Authorization": "Bearer wrong"}, "")):
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(urllib.request.Request(base + path + query, headers=headers), timeout=10)
                assert refused.value.code == 401
                assert "token" in json.loads(refused.value.read())["error"]
            for headers, query in (({}, f"?token={token}"), ({"Authorization": f"Bearer {token}"}, "")):
                with urllib.request.urlopen(urllib.request.Request(base + path + query, headers=headers),
                                            timeout=10) as ok:
                    assert ok.status == 200
        # Only this user can read the file `deepgrid status` takes the token from.
        found = status_path("dash-token").with_name("dashboard.json")
        assert stat.S_IMODE(found.stat().st_mode) == 0o600
        assert json.loads(found.read_text())["token"] == token
    finally:
        runner.shutdown()
    assert not found.exists()


def test_loopback_needs_no_token_and_a_port_in_use_is_refused() -> None:
    run = Run(conf(job_name="dash-loop"), Pace(0.05))
    try:
        assert run.dashboard.token is None and run.dashboard.url.startswith("http://127.0.0.1:")
        assert run.get("/api/run")["job_name"] == "dash-loop"
        taken = conf(job_name="dash-taken", dashboard=f"127.0.0.1:{run.dashboard.port}")
        other = ActorNetworkRunner("master", TRAIN)
        with pytest.raises(Exception, match="dashboard cannot listen on 127.0.0.1"):
            other.setup(taken)
        other.shutdown()
    finally:
        run.finish()


def test_status_json_and_watch_read_the_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(conf(job_name="dash-status", epochs=2), Pace(0.1))
    try:
        poll_until(lambda: run.get("/api/run")["round"] >= 2)
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["status", "--job", "dash-status", "--json"]) == 0
        snapshot = json.loads(out.getvalue())
        assert snapshot["dashboard"]["round"] >= 2 and len(snapshot["workers"]) == 2  # from the API itself
        assert snapshot["run"]["dashboard_url"] == run.dashboard.url
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["status", "--job", "dash-status"]) == 0
        assert f"dashboard {run.dashboard.url}" in out.getvalue() and "ETA " in out.getvalue()

        run.pace.enough.set()  # --watch follows the run to its end, one JSON line a second
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["status", "--job", "dash-status", "--json", "--watch"]) == 0
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert lines and lines[-1]["run"]["status"] == "done"
    finally:
        run.finish()
    out = io.StringIO()
    with redirect_stdout(out):  # the dashboard is gone: the status file, as before
        assert main(["status", "--job", "dash-status", "--json"]) == 0
    assert "dashboard" not in json.loads(out.getvalue())


@pytest.fixture()
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        missing_server(f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common import selenium_manager
    except ImportError:
        missing_server("selenium is needed (pip install -e '.[dev]')")

    def no_downloads(*args: object, **kwargs: object) -> None:
        raise AssertionError("selenium-manager was called: it may download a browser or a driver")

    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", no_downloads)
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1300", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


# What the page shows, read in one script: the page redraws its panels every second (innerHTML), so
# an element found by one WebDriver call may be gone by the next (StaleElementReferenceException).
SHOWN = """
const all = (selector) => Array.from(document.querySelectorAll(selector));
const chart = document.querySelector("#loss-chart");
return {workers: all("#workers tbody tr[data-worker]").map((r) => [r.dataset.worker, r.innerText]),
        points: chart ? Number(chart.getAttribute("data-points")) : 0,
        lines: all("#loss-chart polyline").length,
        facts: document.getElementById("facts").innerText,
        events: document.getElementById("events").innerText,
        kinds: all("#events .badge").map((b) => b.innerText.trim())};
"""


def test_a_browser_shows_the_workers_and_a_growing_loss_chart(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    run = Run(conf(job_name="dash-browser", epochs=20, checkpoint_dir=str(tmp_path / "ckpt")), Pace(0.15))
    try:
        browser.get(run.dashboard.url)
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        shown = wait.until(lambda d: (page := d.execute_script(SHOWN)) and len(page["workers"]) == 2 and page)
        assert sorted(worker for worker, _ in shown["workers"]) == sorted(run.runner.workers)
        assert all("enabled" in text for _, text in shown["workers"])
        before = wait.until(lambda d: d.execute_script(SHOWN)["points"])
        shown = wait.until(lambda d: (page := d.execute_script(SHOWN))["points"] > before + 2 and page)
        assert "finetune" in shown["facts"] and shown["lines"] > 0
        assert "started 2 worker(s)" in shown["events"]
        # A checkpoint each round would bury the other events: a run of them is one row.
        kinds = [kind.lower() for kind in shown["kinds"]]
        assert "checkpoint" in kinds and all(a != b or a != "checkpoint" for a, b in zip(kinds, kinds[1:], strict=False)), kinds
        # The master keeps them so too, so its API (and its last 500 events) keep the rest in view.
        served = run.get("/api/statetracker/events")["events"]
        checkpoints = [e for e in served if e["kind"] == "checkpoint"]
        assert checkpoints and checkpoints[-1]["earlier"] >= 1, served
        assert all(a["kind"] != "checkpoint" or b["kind"] != "checkpoint" for a, b in zip(served, served[1:], strict=False))
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        run.finish()


def test_the_dashboard_setting_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from deepgrid.cli import build_parser
    from deepgrid.config.dashboard_address import dashboard_flag
    from deepgrid.errors import ConfigError

    assert Conf().dashboard == "127.0.0.1:0"
    assert Conf(dashboard="off").dashboard is None and Conf(dashboard=None).dashboard is None
    assert Conf(dashboard="[::1]:8265").dashboard == "[::1]:8265"
    for bad in ("nowhere", "host:70000", "::1:0", ":80", 8265):
        with pytest.raises(ConfigError, match="dashboard"):
            Conf(dashboard=bad)  # type: ignore[arg-type]
    parser = build_parser()
    assert dashboard_flag(parser.parse_args(["train", "--dashboard", "0.0.0.0:8265"])) == "0.0.0.0:8265"
    assert dashboard_flag(parser.parse_args(["master", "c.yaml", "--no-dashboard"])) == "off"
    assert dashboard_flag(parser.parse_args(["train"])) is None  # the Conf's own
    assert main(["train", "--dashboard", "nowhere"]) == 2
    assert "deepgrid: error:" in capsys.readouterr().err
