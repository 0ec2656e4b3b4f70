"""deepgrid across hosts: 1 worker host against 2, on a free and on a limited link, in one run.

Hosts are Linux network namespaces on this machine (tests/netns.py; root only), joined by a
bridge: a master host (no worker actors of its own) and one or two worker hosts, each running
`deepgrid worker --workers 1`, so the CPU count is fair: 1 actor against 2. Every contender
trains the same job:

  MLP 784-256-128-10 (relu, SGD lr 0.05 momentum 0.9) on Fashion-MNIST, batch 64,
  averaging every K = 100 mini-batches, E epochs (default 2).

Links: unlimited (veth), then shaped with a token bucket (``tc qdisc ... tbf``) on every host's
outgoing side, to 1 Gbit/s and 100 Mbit/s (this kernel has tbf but no netem, so no latency is
added). Printed per contender: samples/s (inside training, the master's own clock), rounds,
time per round, bytes the master host sent per round and bytes each worker host sent per round
(interface counters), and the ratio of 2 hosts to 1 host.

    sudo .venv/bin/python bench/bench_hosts.py                      # full data, 2 epochs
    sudo .venv/bin/python bench/bench_hosts.py --train-limit 20000 --epochs 1   # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netns import Network, unavailable  # noqa: E402

DEEPGRID = [sys.executable, "-m", "deepgrid.cli"]
PORT = 6380


def write_conf(path: Path, epochs: int, train_limit: int | None, k: int) -> Path:
    limit = f"train_limit: {train_limit}\n" if train_limit else ""
    path.write_text(f"""model: mlp
job_name: bench-hosts
batch_size: 64
epochs: {epochs}
averaging_frequency: {k}
{limit}network:
  n_in: 784
  n_out: 10
  hidden_layer_sizes: [256, 128]
  activation: relu
  optimizer: sgd
  momentum: 0.9
  finetune_lr: 0.05
""")
    return path


def run_one(n_hosts: int, rate: str | None, conf: Path, work: Path) -> dict:
    names = ["master"] + [f"w{i}" for i in range(1, n_hosts + 1)]
    with Network(names) as net:
        if rate:
            net.limit(rate)
        master = net.hosts["master"]
        out_dir = work / f"model-{n_hosts}-{rate or 'free'}"
        run = master.popen(DEEPGRID + ["master", str(conf), "--bind", master.address, "--min-workers", str(n_hosts),
                                       "--json", "-o", str(out_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        token = master.home / ".ray" / "auth_token"
        while not token.exists():
            time.sleep(0.1)
        for name in names[1:]:
            net.hosts[name].popen(DEEPGRID + ["worker", "-ad", f"{master.address}:{PORT}", "--workers", "1",
                                              "--token-file", str(token)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Bytes are counted from the start of training: the data set's transfer to each host
        # (object store, once per host) happens at set-up and is reported apart.
        sent_before: dict[str, int] = {}
        lines = []
        assert run.stderr is not None
        for line in run.stderr:
            lines.append(line)
            if "training mlp" in line and not sent_before:
                sent_before = {name: net.bytes_sent(name) for name in names}
        out = run.stdout.read() if run.stdout else ""
        run.wait()
        sent = {name: net.bytes_sent(name) - sent_before.get(name, 0) for name in names}
        setup_bytes = sum(sent_before.get(name, 0) for name in names)
    if run.returncode != 0:
        raise SystemExit(f"master failed ({run.returncode}):\n{''.join(lines)[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    rounds = max(1, result["rounds"])
    return {
        "hosts": n_hosts, "link": rate or "unlimited", "samples_per_s": result["samples_per_s"],
        "rounds": rounds, "s_per_round": result["elapsed_s"] / rounds,
        "master_bytes_per_round": sent["master"] / rounds,
        "worker_bytes_per_round": sum(sent[n] for n in names[1:]) / rounds / n_hosts,
        "setup_mb": setup_bytes / 1e6, "test_accuracy": result["test_accuracy"],
        "jobs_by_host": result["jobs_by_host"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--averaging-frequency", "-k", type=int, default=100)
    parser.add_argument("--rates", default="none,1gbit,100mbit", help="links to try: none, or tc rates")
    args = parser.parse_args()
    why_not = unavailable()
    if why_not:
        raise SystemExit(f"bench_hosts: {why_not}")
    work = Path("/tmp/deepgrid-bench-hosts")
    work.mkdir(exist_ok=True)
    conf = write_conf(work / "conf.yaml", args.epochs, args.train_limit, args.averaging_frequency)
    rows = []
    for rate in args.rates.split(","):
        rate = None if rate == "none" else rate
        pair = []
        for n_hosts in (1, 2):
            row = run_one(n_hosts, rate, conf, work)
            pair.append(row)
            rows.append(row)
            print(json.dumps(row), flush=True)
        pair[1]["ratio"] = pair[1]["samples_per_s"] / pair[0]["samples_per_s"]
    print("\n| link | worker hosts | samples/s | 2 hosts / 1 host | rounds | s/round | master sent/round | "
          "each worker sent/round | set-up MB moved | test acc |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
        print(f"| {row['link']} | {row['hosts']} | {row['samples_per_s']:,.0f} | {ratio} | {row['rounds']} | "
              f"{row['s_per_round']:.3f} | {row['master_bytes_per_round'] / 1e6:.2f} MB | "
              f"{row['worker_bytes_per_round'] / 1e6:.2f} MB | {row['setup_mb']:.0f} | {row['test_accuracy']:.4f} |")


if __name__ == "__main__":
    main()
