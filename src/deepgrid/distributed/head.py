"""The master's engine head, from start to stop: ``deepgrid master`` trains inside ``master_head``.

On the way in: a Ray token (a new machine has none, and the head would not start without one),
then the head a killed master left running when resuming, else a new one, recorded under
``$DEEPGRID_HOME/runs/<job>/head.json`` so that a later ``--resume`` finds it. On the way out,
however training ended: this process leaves the cluster, then the head stops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deepgrid.distributed import engine
from deepgrid.distributed.cluster import AdoptedHead, HeadProcess, adopt_head, record_head, start_head
from deepgrid.distributed.token import ensure_token
from deepgrid.state.status import deepgrid_home


@contextmanager
def master_head(bind: str, port: int, job_name: str, model: str, *, resume: bool,
                say: Callable[[str], None]) -> Iterator[HeadProcess | AdoptedHead]:
    """The engine head at ``bind:port`` for job ``job_name``, whose workers run ``model``."""
    ensure_token(say)
    home = deepgrid_home()
    home.mkdir(parents=True, exist_ok=True)
    head_record = home / "runs" / job_name / "head.json"
    head: HeadProcess | AdoptedHead | None = adopt_head(head_record, f"{bind}:{port}") if resume else None
    if head is not None:
        # The killed master's head is still up, and `deepgrid worker` processes with it: they
        # wait for a master to come back and join this one.
        say(f"deepgrid: resuming on the engine head the previous master left at {head.address}")
    else:
        head = start_head(bind, port, os.cpu_count() or 1, str(home / "ray-head.log"))
        record_head(head_record, head)
    say(f"deepgrid: engine head listening on {head.address}; join it with: "
        f"deepgrid worker -ad {head.address} -a {model}")
    try:
        yield head
    finally:
        engine.shutdown()  # leave the cluster before its head goes, or the driver waits for it
        head.stop()
