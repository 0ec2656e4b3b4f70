"""The cluster's shared state (Hazelcast's role in the seed): workers, jobs, the run.

``tracker_from_url("memory://")`` gives the in-process tracker; a Redis one
(``redis://host:6379``) serves a cluster. ``status`` writes and reads the file
that ``deepgrid status`` shows while a run is going on.
"""

from deepgrid.state.base import Job, RunState, StateTracker, WorkerState, tracker_from_url
from deepgrid.state.memory import MemoryStateTracker

__all__ = ["Job", "MemoryStateTracker", "RunState", "StateTracker", "WorkerState", "tracker_from_url"]
