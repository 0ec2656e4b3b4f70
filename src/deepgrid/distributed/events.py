"""What happened during a run, for people: workers joining and leaving, jobs re-queued,
checkpoints written, epochs ended, early stopping.

The parts of the master report through one ``EventLog``: it prints each event's line (through
the runner's ``progress`` function) and keeps the recent ones, with their kind and the worker or
job they concern, for the status page and the dashboard.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

KEEP = 500  # recent events kept in memory


@dataclass(frozen=True)
class Event:
    time: float  # seconds since the epoch
    kind: str  # "info", "started", "joined", "refused", "dropped", "requeued", "checkpoint", "epoch", ...
    message: str
    worker_id: str | None = None
    job_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    """Callable like a ``say(message)`` function; ``kind`` and the ids file the event."""

    def __init__(self, say: Callable[[str], None], keep: int = KEEP) -> None:
        self.say = say
        self._events: deque[Event] = deque(maxlen=keep)
        self._lock = threading.Lock()  # the dashboard reads from its own thread
        self.count = 0  # events ever recorded: a reader asks for those after the last it saw

    def __call__(self, message: str, kind: str = "info", *, worker_id: str | None = None,
                 job_id: str | None = None, quiet: bool = False) -> None:
        """Record an event and print its line (``quiet``: record only, e.g. every checkpoint)."""
        with self._lock:
            self._events.append(Event(time.time(), kind, message, worker_id, job_id))
            self.count += 1
        if not quiet:
            self.say(message)

    def recent(self, limit: int = 100, kind: str | None = None) -> list[Event]:
        with self._lock:
            events = [e for e in self._events if kind is None or e.kind == kind]
        return events[-limit:]
