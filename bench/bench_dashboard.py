"""What the dashboard costs a run: the same job with and without it, side by side.

The competitors' job (bench/common.py: MLP 784-256-128-10 on Fashion-MNIST, batch 64, 2 workers,
K = 100; 10% held out for validation, so the validation chart's accuracy pass is counted too),
run in alternating pairs:

  off   Conf.dashboard = None
  on    the default dashboard (loopback, a free port) with one page open: another process asks
        for what the page asks for (/api/page) every second, as a browser tab does

and ``runner.samples_per_s`` compared pair by pair (target: the median of on / off >= 0.98).
The machine is shared, so the pairs' order alternates, the CPU other processes took is printed,
and the fastest run of each kind is compared too. Two figures the neighbours move less: the CPU
seconds the run's processes (master, workers, the page's process) spent per 1000 samples, and the
CPU time the dashboard's own threads used (the server's event loop and its reader; the
validation accuracy's thread at nice 19 and the torch threads it started).

    .venv/bin/python bench/bench_dashboard.py              # 6 pairs, 60k examples, 5 epochs
    .venv/bin/python bench/bench_dashboard.py --pairs 10 --epochs 3
    .venv/bin/python bench/bench_dashboard.py --pairs 2 --epochs 1   # a smoke run
    .venv/bin/python bench/bench_dashboard.py --metrics-file         # as `deepgrid train` runs
    .venv/bin/python bench/bench_dashboard.py --interleave --metrics-file   # blocks within one run

Whole runs side by side cannot resolve 2% on this machine: its cores change speed by tens of per
cent from minute to minute, so two runs of the same kind differ more than the dashboard costs.
``--interleave`` compares neighbours a few seconds apart instead: ONE long run with the dashboard
started, switched on and off every ``--block`` epochs. Off: the dashboard's callback is taken out
of the runner's callbacks (the page gets no rounds) and the page's process is stopped (SIGSTOP: no
requests); its server thread stays, idle in epoll, and its CPU in the off blocks is printed (the
residue an interleaved "off" keeps). On: both back. Blocks are whole epochs (the same work each: an
epoch's short last round and its validation); a block's samples/s is its samples over the wall time
from the end of the epoch before it to the end of its last (callbacks, validations included), and
each on block is compared with the mean of the two off blocks beside it. The figure is given for
all on blocks, and for the quiet ones: those whose three blocks other processes (other tests, say)
used under 0.1 CPUs (``QUIET_CPUS``, fixed before any run).

With --metrics-file both runs write metrics.jsonl, as every `deepgrid train` and `deepgrid master`
run does: the validation accuracy is then computed once on the training thread for the file, and
the dashboard shows that one (no pass of its own), so the difference is the serving alone. Without
it (the Python API, where no metrics file is written), the dashboard runs its own accuracy pass.

While it times, it holds /tmp/deepgrid-bench.lock (other sessions' tests wait for it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

LOCK = Path("/tmp/deepgrid-bench.lock")
QUIET_CPUS = 0.1  # --interleave: a ratio counts as quiet when other processes used less in its three blocks
PAGE_PATH = "/api/page?since={since}&events_since={events}"  # what the page asks for each second


def acquire_lock() -> None:
    said = False
    while True:
        try:
            fd = os.open(LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not said:
                print(f"... {LOCK} exists (another benchmark is timing): waiting", file=sys.stderr, flush=True)
                said = True
            time.sleep(5)
            continue
        os.write(fd, f"{os.getpid()} bench_dashboard.py\n".encode())
        os.close(fd)
        return


def poll(url: str) -> None:
    """One open page, in a process of its own as a browser is: what the page asks for, once a second
    on one kept-alive connection (as a browser's), until killed; a line on stdout per poll."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=5)
    since, events = -1, 0
    while True:
        try:
            connection.request("GET", PAGE_PATH.format(since=since, events=events))
            body = json.loads(connection.getresponse().read())
            since, events = body["metrics"]["last_round"], body["events"]["count"]
            print("poll", flush=True)
        except (OSError, http.client.HTTPException):
            connection.close()  # it reconnects at the next request
            print("error", flush=True)
        time.sleep(1.0)


class Page:
    """``poll`` in a child process (its HTTP client and JSON parsing must not share the master's GIL)."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--poll", url], stdout=subprocess.PIPE, text=True)
        self.process.stdout.readline()  # started and polled once: training starts after that
        self.polls = self.errors = 0
        self.cpu_s = 0.0  # the page's process, user + system, read when it stops

    def stop(self) -> None:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        self.cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        self.polls, self.errors = out.count("poll"), out.count("error")  # while training


def dashboard_cpu_s() -> tuple[float, float]:
    """CPU seconds used so far by the dashboard's live threads: (serving: the event loop and its
    reader; accuracy: the validation accuracy's thread and the torch threads it started, at nice 19)."""
    named = {t.native_id: t.name for t in threading.enumerate() if t.name.startswith("deepgrid-dashboard")}
    serving = accuracy = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                nice = int(f.read().rsplit(")", 1)[1].split()[16])
            name = named.get(int(tid))
            if name is None and nice != 19:
                continue
            with open(f"/proc/self/task/{tid}/schedstat") as f:  # nanoseconds on a CPU
                used = int(f.read().split()[0]) / 1e9
            if nice == 19 or (name or "").endswith("accuracy"):
                accuracy += used
            else:
                serving += used
        except (OSError, ValueError, IndexError):
            pass
    return serving, accuracy


def one_run(dashboard: bool, train: Any, epochs: int, index: int, watch: Any, metrics_file: bool = False) -> dict[str, Any]:
    import common  # here, not at the top: the page's process must not load torch (seconds of CPU)

    from deepgrid.distributed.metrics_file import MetricsRecorder
    from deepgrid.distributed.runner import ActorNetworkRunner
    from deepgrid.train.metrics_file import MetricsFile

    conf = common.deepgrid_conf(2, 100, epochs, f"bench-dashboard-{index}", validation_fraction=0.1,
                                dashboard="127.0.0.1:0" if dashboard else None)
    runner = ActorNetworkRunner("master", train, progress=lambda message: None)
    page = None
    try:
        runner.setup(conf)
        if metrics_file:  # what the CLI adds after setup (distributed.metrics_file.begin_outputs)
            out = Path(os.environ["DEEPGRID_HOME"]) / f"run-{index}"
            runner.callbacks.append(MetricsRecorder(MetricsFile(out, fresh=True)))
        if dashboard:
            page = Page(next(c for c in runner.callbacks if type(c).__name__ == "Dashboard").url)
        before, ours = dashboard_cpu_s(), watch.ours()
        runner.train()
        after, ours = dashboard_cpu_s(), watch.ours() - ours  # before shutdown ends the threads
        serving, accuracy = after[0] - before[0], after[1] - before[1]
    finally:
        if page is not None:
            page.stop()
        runner.shutdown()
    return {"dashboard": dashboard, "samples_per_s": runner.samples_per_s, "train_s": runner.train_seconds,
            "serving_cpu_s": serving, "accuracy_cpu_s": accuracy, "polls": page.polls if page else 0,
            "poll_errors": page.errors if page else 0,
            "cpu_s_per_ksample": 1000 * ours / max(runner.samples_trained, 1)}


class Toggle:
    """A callback after the dashboard's: every ``block`` epochs switches the dashboard off or on
    (see the module's docstring) and keeps each block's samples, wall time and dashboard CPU.
    Blocks are whole epochs so that each holds the same work (an epoch's short last round and its
    validation)."""

    def __init__(self, dashboard: Any, page: Page, block: int, watch: Any) -> None:
        self.dashboard, self.page, self.block, self.watch = dashboard, page, block, watch
        self.on, self.epochs, self.samples = True, 0, 0
        self.blocks: list[dict[str, Any]] = []
        self._start: tuple[float, float, float] | None = None  # (wall, dashboard CPU, others' CPU) at its start

    def on_round_end(self, master: Any, report: Any) -> None:
        if self._start is not None:
            self.samples += report.n_samples

    def on_epoch_end(self, master: Any, *args: Any) -> None:
        now = time.perf_counter()
        if self._start is None:  # the first epoch's end starts the first block
            self._start = (now, sum(dashboard_cpu_s()), self.watch.read())
            return
        self.epochs += 1
        if self.epochs < self.block:
            return
        cpu, others = sum(dashboard_cpu_s()), self.watch.read()
        seconds = now - self._start[0]
        self.blocks.append({"on": self.on, "samples": self.samples, "seconds": seconds,
                            "samples_per_s": self.samples / seconds, "dashboard_cpu_s": cpu - self._start[1],
                            "others_cpu": (others - self._start[2]) / seconds})
        self.on = not self.on
        # A new list, not the one the runner is looping over right now.
        if self.on:
            master.callbacks = [c for c in master.callbacks if c is not self] + [self.dashboard, self]
            os.kill(self.page.process.pid, signal.SIGCONT)
        else:
            master.callbacks = [c for c in master.callbacks if c is not self.dashboard]
            os.kill(self.page.process.pid, signal.SIGSTOP)
        self.epochs = self.samples = 0
        self._start = (time.perf_counter(), sum(dashboard_cpu_s()), self.watch.read())


def interleaved(train: Any, epochs: int, block: int, metrics_file: bool, watch: Any) -> dict[str, Any]:
    """One run, the dashboard switched every ``block`` epochs; on blocks against their off neighbours."""
    import common

    from deepgrid.distributed.metrics_file import MetricsRecorder
    from deepgrid.distributed.runner import ActorNetworkRunner
    from deepgrid.train.metrics_file import MetricsFile

    conf = common.deepgrid_conf(2, 100, epochs, "bench-dashboard-interleaved", validation_fraction=0.1,
                                dashboard="127.0.0.1:0")
    runner = ActorNetworkRunner("master", train, progress=lambda message: None)
    page = None
    try:
        runner.setup(conf)
        if metrics_file:
            out = Path(os.environ["DEEPGRID_HOME"]) / "run-interleaved"
            runner.callbacks.append(MetricsRecorder(MetricsFile(out, fresh=True)))
        dashboard = next(c for c in runner.callbacks if type(c).__name__ == "Dashboard")
        page = Page(dashboard.url)
        toggle = Toggle(dashboard, page, block, watch)
        runner.callbacks.append(toggle)
        runner.train()
    finally:
        if page is not None:
            os.kill(page.process.pid, signal.SIGCONT)
            page.stop()
        runner.shutdown()
    blocks = toggle.blocks
    ratios, quiet = [], []  # each on block against the mean of the off blocks on either side of it
    for i, b in enumerate(blocks):
        if b["on"] and 0 < i < len(blocks) - 1:
            ratio = b["samples_per_s"] / ((blocks[i - 1]["samples_per_s"] + blocks[i + 1]["samples_per_s"]) / 2)
            ratios.append(ratio)
            if max(blocks[j]["others_cpu"] for j in (i - 1, i, i + 1)) < QUIET_CPUS:
                quiet.append(ratio)
    return {"blocks": blocks, "ratios": ratios, "quiet_ratios": quiet, "samples_per_s": runner.samples_per_s,
            "polls": page.polls, "page_cpu_s": page.cpu_s}


def bootstrap_ci(values: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """A 95% interval for the mean of ``values`` (resampled with replacement)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.choice(np.asarray(values), size=(n, len(values)), replace=True).mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def report_interleaved(result: dict[str, Any]) -> None:
    blocks = result["blocks"]
    for i, b in enumerate(blocks):
        print(f"block {i + 1:3d}: dashboard {'on ' if b['on'] else 'off'}  {b['samples_per_s']:9,.0f} samples/s"
              f"  {b['seconds']:5.2f} s  dashboard CPU {1000 * b['dashboard_cpu_s']:6.1f} ms"
              f"  others {b['others_cpu']:.2f} CPUs")
    on = [b for b in blocks if b["on"]]
    off = [b for b in blocks if not b["on"]]
    print(f"\n{len(blocks)} blocks; page polls {result['polls']}")
    summary = {}
    for name, ratios in (("all", result["ratios"]), (f"quiet (others < {QUIET_CPUS} CPUs)", result["quiet_ratios"])):
        if len(ratios) < 2:
            print(f"{name}: {len(ratios)} on block(s) between two off blocks: too few for a figure")
            continue
        low, high = bootstrap_ci(ratios)
        mean = statistics.fmean(ratios)
        summary[name] = {"mean": mean, "ci95": [low, high], "n": len(ratios)}
        print(f"{name}: {len(ratios)} on blocks against their off neighbours: mean {mean:.4f} "
              f"(95% interval {low:.4f} .. {high:.4f}), median {statistics.median(ratios):.4f}; "
              f"the dashboard costs {100 * (1 - mean):.2f}% of samples/s, at most {100 * (1 - low):.2f}% "
              f"(target <= 2%: {'PASS' if low >= 0.98 else 'NOT SHOWN'})")
    cpu_on = sum(b["dashboard_cpu_s"] for b in on) / sum(b["seconds"] for b in on)
    cpu_off = sum(b["dashboard_cpu_s"] for b in off) / sum(b["seconds"] for b in off)
    print(f"the dashboard's threads used, of one CPU: {100 * cpu_on:.2f}% in on blocks, "
          f"{100 * cpu_off:.2f}% in off blocks (idle server thread); the page's process (the browser's "
          f"part, on the same 2 cores here) {100 * result['page_cpu_s'] / sum(b['seconds'] for b in on):.2f}% "
          "in on blocks")
    print(json.dumps({"summary": summary, "dashboard_cpu_share_on": cpu_on, "dashboard_cpu_share_off": cpu_off, **result}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6, help="off/on pairs (default 6)")
    parser.add_argument("--limit", type=int, default=60_000, help="training examples (default 60000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs a run (default 5)")
    parser.add_argument("--metrics-file", action="store_true",
                        help="both runs write metrics.jsonl, as `deepgrid train` does (see above)")
    parser.add_argument("--interleave", action="store_true",
                        help="one long run, the dashboard switched on and off every --block epochs (see above)")
    parser.add_argument("--block", type=int, default=2, help="epochs a block with --interleave (default 2)")
    parser.add_argument("--poll", metavar="URL", help=argparse.SUPPRESS)  # the page's process
    args = parser.parse_args()
    if args.poll:
        return poll(args.poll)

    import common
    import torch

    from deepgrid.distributed import engine

    torch.set_num_threads(1)
    os.environ.setdefault("DEEPGRID_HOME", "/tmp/deepgrid-bench-dashboard")
    train, _ = common.load_data(args.limit)
    engine.start_local(num_cpus=2)
    watch = common.ForeignCpu()
    watch.start()
    runs: list[dict[str, Any]] = []
    acquire_lock()
    if args.interleave:
        try:
            one_run(False, train, 1, -1, watch)  # warm-up
            foreign = watch.read()
            started = time.perf_counter()
            result = interleaved(train, args.epochs, args.block, args.metrics_file, watch)
            result["others_cpu"] = (watch.read() - foreign) / (time.perf_counter() - started)
            print(f"others' processes used {result['others_cpu']:.2f} CPUs meanwhile")
        finally:
            LOCK.unlink(missing_ok=True)
            watch.stop()
            engine.shutdown()
        return report_interleaved(result)
    try:
        one_run(False, train, 1, -1, watch)  # warm-up: Ray's workers, the imports, the caches
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            for dashboard in order:
                foreign = watch.read()
                run = one_run(dashboard, train, args.epochs, len(runs), watch, args.metrics_file)
                run["others_cpu"] = (watch.read() - foreign) / max(run["train_s"], 1e-9)
                runs.append(run)
                print(f"pair {pair + 1}: dashboard {'on ' if dashboard else 'off'}  {run['samples_per_s']:9,.0f} samples/s"
                      f"  {run['train_s']:6.2f} s  dashboard CPU s: serving {run['serving_cpu_s']:.2f}, accuracy {run['accuracy_cpu_s']:.2f}"
                      f"  page polls {run['polls']}  CPU s/1000 samples {run['cpu_s_per_ksample']:.4f}"
                      f"  others {run['others_cpu']:.2f} CPUs", flush=True)
    finally:
        LOCK.unlink(missing_ok=True)
        watch.stop()
        engine.shutdown()
    off = [r["samples_per_s"] for r in runs if not r["dashboard"]]
    on = [r["samples_per_s"] for r in runs if r["dashboard"]]
    on_runs = [r for r in runs if r["dashboard"]]
    train_s = sum(r["train_s"] for r in on_runs)
    serving_share = sum(r["serving_cpu_s"] for r in on_runs) / train_s
    accuracy_share = sum(r["accuracy_cpu_s"] for r in on_runs) / train_s
    # Two neighbouring runs share the machine's weather: the median of the pairs' ratios is the
    # figure; the fastest runs of each kind (the least disturbed) are a second look.
    ratio = statistics.median(b / a for a, b in zip(off, on, strict=True))
    best = max(on) / max(off)
    print(f"\nsamples/s, median of {len(off)}: off {statistics.median(off):,.0f}, on (a page polling) "
          f"{statistics.median(on):,.0f}")
    print(f"on/off, median of the pairs: {ratio:.3f} (target >= 0.98: {'PASS' if ratio >= 0.98 else 'MISS'}); "
          f"fastest on / fastest off: {best:.3f}")
    cpu_off = statistics.median(r["cpu_s_per_ksample"] for r in runs if not r["dashboard"])
    cpu_on = statistics.median(r["cpu_s_per_ksample"] for r in on_runs)
    print(f"CPU seconds per 1000 samples (master, workers, the page's process), median: off {cpu_off:.4f}, "
          f"on {cpu_on:.4f}: on/off = {cpu_on / cpu_off:.3f}")
    print(f"the dashboard's threads used, of one CPU while training: {100 * serving_share:.2f}% serving the page, "
          f"{100 * accuracy_share:.2f}% on the validation accuracy (nice 19)")
    print(json.dumps({"pair_ratio_median": ratio, "best_ratio": best, "off_samples_per_s": off,
                      "on_samples_per_s": on, "serving_cpu_share": serving_share,
                      "accuracy_cpu_share": accuracy_share,
                      "cpu_per_ksample_off": cpu_off, "cpu_per_ksample_on": cpu_on, "runs": runs}))


if __name__ == "__main__":
    main()
