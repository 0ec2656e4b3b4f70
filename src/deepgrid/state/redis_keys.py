"""The Redis state tracker's key layout, and how its values are written and read back.

J is the job name; every key of a run starts with ``deepgrid:J:``, so several runs share one Redis:

=================================  ======  ===========================================================
key                                type    holds
=================================  ======  ===========================================================
``deepgrid:J:workers``             set     the ids of the registered workers
``deepgrid:J:worker:<id>``         hash    one worker: ``info`` (JSON), ``enabled`` (1/0),
                                           ``last_heartbeat`` (unix seconds), ``jobs_done``,
                                           ``samples``, ``failures``, ``last_loss`` (JSON), and while
                                           it holds a job ``job`` (Job JSON) and ``job_id``
``deepgrid:J:queue``               list    pending jobs as JSON, the next one first
``deepgrid:J:ledger:<phase>:<e>``  hash    batch position -> times trained, for one phase and epoch
``deepgrid:J:run``                 hash    RunState field -> JSON value
``deepgrid:J:metrics``             list    one JSON entry per round, oldest first
``deepgrid:J:marker``              string  set when the namespace is opened; its absence after a
                                           reconnection means Redis lost the run's state
``deepgrid:J:once:<token>``        string  the answer to one write, kept 10 minutes (see
                                           :mod:`deepgrid.state.redis_scripts`)
``deepgrid:J:lease``               string  the master's lease (JSON: id, host, pid, since), expiring
                                           after 15 s unless renewed (see
                                           :mod:`deepgrid.state.redis_lease`)
=================================  ======  ===========================================================
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepgrid.errors import ConfigError, invalid
from deepgrid.state.base import Job, RunState, WorkerState

# The job name becomes part of every key and of SCAN patterns: keep it free of separators and globs.
_BAD_JOB_CHARS = re.compile(r"[:\s*?\[\]\\{}]")


def check_job_name(job_name: str) -> str:
    """``job_name`` if it can be a Redis key prefix, else one line saying what a name may hold."""
    if not isinstance(job_name, str) or not job_name or _BAD_JOB_CHARS.search(job_name):
        raise ConfigError(invalid(
            "job_name", job_name, "a non-empty name without ':', spaces or *?[]\\{} (it becomes part of Redis keys)",
            "Name the run like 'fmnist-dbn'."))
    return job_name


@dataclass(frozen=True)
class RedisKeys:
    """The keys of one job's namespace (the table above); ``prefix`` is ``deepgrid:J:``."""

    prefix: str

    @classmethod
    def for_job(cls, job_name: str) -> RedisKeys:
        return cls(f"deepgrid:{check_job_name(job_name)}:")

    @property
    def worker_prefix(self) -> str:
        """What a worker's id follows; the scripts that touch every worker build the keys from it."""
        return self.prefix + "worker:"

    def worker(self, worker_id: str) -> str:
        return self.worker_prefix + worker_id

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    @property
    def queue(self) -> str:
        return self.prefix + "queue"

    @property
    def run(self) -> str:
        return self.prefix + "run"

    @property
    def metrics(self) -> str:
        return self.prefix + "metrics"

    @property
    def marker(self) -> str:
        return self.prefix + "marker"

    @property
    def lease(self) -> str:
        return self.prefix + "lease"

    def ledger(self, phase: str, epoch: int) -> str:
        return f"{self.prefix}ledger:{phase}:{int(epoch)}"

    def once(self) -> str:
        """A new one-time token's key: where one write keeps its first answer."""
        return f"{self.prefix}once:{uuid.uuid4().hex}"


# -- values ----------------------------------------------------------------------------------


def pairs(flat: list[Any]) -> dict[str, str]:
    """A hash as a Lua script returns it (field, value, field, value ...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def worker_from_hash(worker_id: str, h: Mapping[str, str]) -> WorkerState:
    job = Job.from_dict(json.loads(h["job"])) if h.get("job") else None
    last_loss = json.loads(h["last_loss"]) if h.get("last_loss") else None
    return WorkerState(
        worker_id, json.loads(h.get("info", "{}")), h.get("enabled") == "1", float(h.get("last_heartbeat", 0.0)),
        job, int(h.get("jobs_done", 0)), int(h.get("samples", 0)), int(h.get("failures", 0)), last_loss)


def run_from_hash(h: Mapping[str, str]) -> RunState:
    return RunState.from_dict({k: json.loads(v) for k, v in h.items()})


def json_scalar(value: Any) -> Any:
    """json.dumps' fallback: a numpy or torch scalar becomes its Python number."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def job_json(job: Job) -> str:
    # The id travels with the job, so that the scripts never have to format one themselves.
    return json.dumps({**job.to_dict(), "id": job.id})
