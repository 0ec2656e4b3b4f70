"""One worker's epoch, run as its own process under a memory cap (test_bigdata.py).

``python -m tests.integration.bigdata_worker CONF_JSON MODE``: MODE ``mapped`` builds a
``Worker`` as a ``data_feed: files`` worker does (it reads the Conf's npy files itself: memory-
mapped), ``memory`` holds the same examples in memory (what the in-memory path would hold),
``baseline`` builds the worker and trains nothing. Prints one JSON line: samples, seconds,
held-out accuracy, peak RSS.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time

import torch

from deepgrid.config.conf import Conf
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.mnist import load_splits
from deepgrid.distributed.worker import Worker, build_named_model, load_worker_data
from deepgrid.state.base import Job
from deepgrid.train.loop import jobs


def main(conf_json: str, mode: str) -> None:
    conf = Conf.from_dict(json.loads(conf_json))
    network = conf.network.to_dict()
    if mode == "memory":
        mapped = load_worker_data(conf.to_dict())
        worker = Worker("w1", lambda: build_named_model(conf.model, network), mapped.x.numpy(), mapped.y.numpy(),
                        batch_size=conf.batch_size)
    else:
        worker = Worker("w1", lambda: build_named_model(conf.model, network), conf.to_dict(),
                        batch_size=conf.batch_size)
    samples, started = 0, time.perf_counter()
    if mode != "baseline":
        order = worker._order("finetune", 0)
        start = 0
        for index, job in enumerate(jobs(order, conf.averaging_frequency)):
            task = Job("finetune", 0, index, start, start + len(job))
            samples += worker.train(None, dataclasses.asdict(task))["n_samples"]
            start += len(job)
    seconds = time.perf_counter() - started
    _, test = load_splits(conf)
    accuracy = worker.model.score(test.x, test.y) if samples else None
    print(json.dumps({"mode": mode, "samples": samples, "seconds": seconds, "accuracy": accuracy,
                      "mapped": type(worker.data).__name__ != ArrayDataset.__name__,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
