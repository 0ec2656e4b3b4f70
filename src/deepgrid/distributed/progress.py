"""Progress of a distributed run: a bar on a terminal, a plain line every few seconds elsewhere.

On a terminal (stderr is a tty) a tqdm bar shows rounds done out of the rounds expected, the
samples per second, the live workers and the time left; lines printed meanwhile go above it
(deepgrid's log handler writes through ``tqdm.write``). Elsewhere (a log file, CI, a pipe) a
plain line every ``PLAIN_EVERY_S`` seconds says the same. Nothing is shown when the ``deepgrid``
logger is above INFO (``deepgrid -q``).

The rounds expected are an estimate: the jobs left in the run (every epoch of every phase, to
the end: early stopping can only shorten it) over the jobs a round has trained so far. It moves
when workers join or leave, as a round then trains more or fewer jobs.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from deepgrid.distributed.callbacks import RoundReport
from deepgrid.distributed.locality import epoch_size
from deepgrid.train.logs import shows_progress

if TYPE_CHECKING:
    from deepgrid.distributed.runner import ActorNetworkRunner

PLAIN_EVERY_S = 10.0


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def run_jobs(master: ActorNetworkRunner) -> tuple[int, int]:
    """(jobs done, jobs in the whole run): every epoch of every phase, cut as the runner cuts them."""
    conf = master.conf
    _, per_epoch = epoch_size(master.shards, master.train_data, conf.batch_size, conf.averaging_frequency)
    phases = master.model.phases(conf.epochs)
    total = sum(phase.epochs for phase in phases) * per_epoch
    progress = master.progress
    done = sum(phase.epochs for phase in phases[: progress.phase_index]) * per_epoch
    done += progress.epoch * per_epoch + len(progress.done_jobs)
    return min(done, total), total


class RunProgressDisplay:
    """A callback: the run's progress after each round, as a bar or as plain lines (see the module).

    ``say`` prints a plain line (the runner's progress function); ``bar``: None decides by
    whether stderr is a terminal.
    """

    def __init__(self, say: Callable[[str], None], *, bar: bool | None = None,
                 every_s: float = PLAIN_EVERY_S) -> None:
        self.say, self.every_s = say, every_s
        self.use_bar = bar
        self._bar: Any = None
        self._started: float | None = None  # when the first round of this run began
        self._first_round = 0  # the rounds done before it (a resumed run)
        self._samples = 0
        self._jobs = 0
        self._last_line = -math.inf

    def status(self, master: ActorNetworkRunner) -> dict[str, Any]:
        """Where the run stands: rounds done and expected, samples/s, live workers, seconds left."""
        done, total = run_jobs(master)
        rounds = master.round - self._first_round
        elapsed = time.monotonic() - self._started if self._started is not None else 0.0
        per_round = self._jobs / rounds if rounds else 1.0
        expected = master.round + math.ceil(max(total - done, 0) / max(per_round, 1e-9))
        eta = (expected - master.round) * elapsed / rounds if rounds else None
        return {"round": master.round, "rounds": expected, "samples_per_s": self._samples / elapsed if elapsed else 0.0,
                "workers": len(master.workers), "eta_s": eta, "jobs_done": done, "jobs": total}

    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None:
        if not shows_progress():
            return
        if self._started is None:
            self._started = time.monotonic() - report.seconds
            self._first_round = report.round - 1
        self._samples += report.n_samples
        self._jobs += len(report.results)
        status = self.status(master)
        if self.use_bar is None:
            self.use_bar = sys.stderr.isatty()
        if self.use_bar:
            self._update_bar(status)
        elif time.monotonic() - self._last_line >= self.every_s:
            self._last_line = time.monotonic()
            percent = 100 * status["jobs_done"] / max(status["jobs"], 1)
            self.say(f"round {status['round']}/{status['rounds']} ({percent:.0f}%), "
                     f"{status['samples_per_s']:,.0f} samples/s, {status['workers']} workers, "
                     f"ETA {format_eta(status['eta_s'])}")

    def _update_bar(self, status: dict[str, Any]) -> None:
        postfix = f"{status['samples_per_s']:,.0f} samples/s, {status['workers']} workers"
        if self._bar is None:
            # tqdm's own rate and ETA count from `initial` (a resumed run's first round)
            self._bar = tqdm(total=status["rounds"], initial=self._first_round, unit="round", file=sys.stderr,
                             dynamic_ncols=True, leave=False, desc="training", postfix=postfix)
        self._bar.total = status["rounds"]
        self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(status["round"] - self._bar.n)  # redraws at most every 0.1 s (tqdm's mininterval)

    def on_train_end(self, master: ActorNetworkRunner) -> None:
        """The run ended (finished, stopped early or failed): the bar goes, so that what is printed
        next starts on a line of its own."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
