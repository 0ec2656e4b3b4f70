"""The master's event log: numbered events, and a run of checkpoint events kept as its latest."""

from deepgrid.distributed.events import EventLog


def test_a_run_of_checkpoint_events_is_kept_as_its_latest_with_a_count():
    said: list[str] = []
    log = EventLog(said.append, keep=5)
    log("worker w1 joined", "joined", worker_id="w1")
    for r in range(1, 101):  # a checkpoint every round would push the join out of a 5-event log
        log(f"checkpoint written: ckpt-{r}", "checkpoint", quiet=True)
    log("worker w1 dropped; its job re-queued", "dropped", worker_id="w1", job_id="train/0/3")
    log("checkpoint written: ckpt-101", "checkpoint", quiet=True)
    events = log.recent(500)
    assert [e.kind for e in events] == ["joined", "checkpoint", "dropped", "checkpoint"]
    assert events[1].message.endswith("ckpt-100") and events[1].earlier == 99
    assert events[3].earlier == 0  # another event came between: a new run of them
    assert [e.index for e in events] == [0, 100, 101, 102]  # numbers are never reused
    assert log.count == 103
    assert said == ["worker w1 joined", "worker w1 dropped; its job re-queued"]  # quiet ones not printed


def test_since_lists_each_event_once_to_a_reader_that_asks_from_the_count_it_got():
    log = EventLog(lambda message: None)
    log("a", "info")
    count, events = log.since(0)
    assert count == 1 and [e.message for e in events] == ["a"]
    log("ckpt 1", "checkpoint")
    log("ckpt 2", "checkpoint")  # replaces ckpt 1, which this reader never saw
    count, events = log.since(count)
    assert count == 3 and [(e.message, e.earlier, e.index) for e in events] == [("ckpt 2", 1, 2)]
    count, events = log.since(count)
    assert count == 3 and events == []
    log("ckpt 3", "checkpoint")
    count, events = log.since(count, limit=10)
    assert count == 4 and [(e.message, e.earlier) for e in events] == [("ckpt 3", 2)]
