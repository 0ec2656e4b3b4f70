"""What happened during a run, for people: workers joining and leaving, jobs re-queued,
checkpoints written, epochs ended, early stopping.

The parts of the master report through one ``EventLog``: it prints each event's line (through
the runner's ``progress`` function) and keeps the recent ones, with their kind and the worker or
job they concern, for the status page and the dashboard.

A run that checkpoints every round would fill the kept events with "checkpoint written" and push
out the joins, drops and re-queues a reader came for; so a checkpoint event that follows another
replaces it, counting the ones it replaced (``earlier``).
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
    index: int = 0  # its number among all the events of the run (a replaced one's number is not reused)
    earlier: int = 0  # checkpoint events it replaced, right before it

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
            earlier = 0
            if kind == "checkpoint" and self._events and self._events[-1].kind == "checkpoint":
                earlier = self._events.pop().earlier + 1
            self._events.append(Event(time.time(), kind, message, worker_id, job_id, self.count, earlier))
            self.count += 1
        if not quiet:
            self.say(message)

    def recent(self, limit: int = 100, kind: str | None = None) -> list[Event]:
        with self._lock:
            events = [e for e in self._events if kind is None or e.kind == kind]
        return events[-limit:]

    def since(self, since: int, limit: int = 200) -> tuple[int, list[Event]]:
        """The events numbered ``since`` and after (the latest ``limit`` of them), and the number a
        reader asks from next time: read together, so none is missed or listed twice."""
        with self._lock:
            return self.count, [e for e in self._events if e.index >= since][-limit:]
