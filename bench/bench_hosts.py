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
(interface counters), the ratio of 2 hosts to 1 host, how busy the actors were (their CPU time
over the training time) and their CPU per round, the ratio the two runs would give had their actors
trained at the same speed (2 x busy with 2 hosts / busy with 1: this machine's cores run at varying
speed, which moves samples/s from run to run), and how much CPU other people's processes took
meanwhile (% of one core; the load average at the end). Each contender holds
/tmp/deepgrid-bench.lock (bench/common.py's BenchLock), which other sessions' test runs wait for.
With --cpu, also every process's CPU while training, by host and role (actor, master driver, raylet,
GCS, agents...), as % of one core and as CPU milliseconds per round.

    sudo .venv/bin/python bench/bench_hosts.py                      # full data, 2 epochs
    sudo .venv/bin/python bench/bench_hosts.py --train-limit 20000 --epochs 1   # quicker
    sudo .venv/bin/python bench/bench_hosts.py --rates none --hosts 2 --epochs 10 --cpu
        # where the CPU goes while 2 worker hosts train: per process, per host
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import BenchLock  # noqa: E402  (bench/common.py: Python puts this script's folder on its path)

from tests.netns import Network, unavailable  # noqa: E402

DEEPGRID = [sys.executable, "-m", "deepgrid.cli"]
PORT = 6380


def write_conf(path: Path, epochs: int, train_limit: int | None, k: int, extra: list[str] | None = None) -> Path:
    limit = f"train_limit: {train_limit}\n" if train_limit else ""
    limit += "".join(f"{setting.replace('=', ': ', 1)}\n" for setting in extra or [])
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


# What each process is, from its command line: (fragment, label), first match wins.
ROLES = [("deepgrid.cli master", "master driver"), ("bench_hosts.py", "bench_hosts"),
         ("deepgrid.cli worker", "`deepgrid worker` driver"), ("/raylet", "raylet"), ("gcs_server", "GCS"),
         ("dashboard/agent.py", "dashboard agent"), ("runtime_env/agent", "runtime-env agent"),
         ("dashboard/dashboard.py", "dashboard"), ("log_monitor.py", "log monitor"),
         ("autoscaler/_private/monitor.py", "autoscaler monitor"), ("ray start", "`ray start --block`")]


def cpu_ticks() -> dict[tuple[int, int], tuple[int, str]]:
    """(pid, start time) -> (user + system clock ticks so far, command line), for every process on
    the machine. (Ray renames an actor's process as it runs tasks: the start time, not the command
    line, tells a process from a newer one with the same pid.)"""
    ticks = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        ticks[(int(entry.name), int(fields[19]))] = (int(fields[11]) + int(fields[12]), cmdline)
    return ticks


def machine_ticks() -> dict[str, int]:
    """The machine's idle and stolen (by the hypervisor) clock ticks so far, all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return {"idle": fields[3] + fields[4], "stolen": fields[7]}


def role(cmdline: str) -> str:
    if cmdline.startswith("ray::"):  # a Ray worker process: ray::IDLE, or an actor's class (ray::Worker.train)
        return cmdline.split()[0].split(".")[0]
    return next((label for fragment, label in ROLES if fragment in cmdline), cmdline[:60] or "(kernel thread)")


def cpu_table(before: dict[tuple[int, int], tuple[int, str]], after: dict[tuple[int, int], tuple[int, str]],
              seconds: float, host_of: dict[int, str]) -> list[tuple[str, str, float]]:
    """(host, role, % of one core) over the window, largest first; processes outside the hosts count as 'outside'."""
    per_tick = 100.0 / os.sysconf("SC_CLK_TCK") / seconds
    used: dict[tuple[str, str], float] = defaultdict(float)
    for key, (ticks, cmdline) in after.items():
        start = before.get(key, (0, ""))[0]
        if ticks > start:
            used[(host_of.get(key[0], "outside"), role(cmdline))] += (ticks - start) * per_tick
    return sorted(((h, r, pct) for (h, r), pct in used.items()), key=lambda row: -row[2])


def run_one(n_hosts: int, rate: str | None, conf: Path, work: Path, cpu: bool = False,
            env: dict[str, str] | None = None) -> dict:
    names = ["master"] + [f"w{i}" for i in range(1, n_hosts + 1)]
    with Network(names) as net:
        if rate:
            net.limit(rate)
        master = net.hosts["master"]
        out_dir = work / f"model-{n_hosts}-{rate or 'free'}"
        run = master.popen(DEEPGRID + ["master", str(conf), "--bind", master.address, "--min-workers", str(n_hosts),
                                       "--json", "-o", str(out_dir)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        token = master.home / ".ray" / "auth_token"
        while not token.exists():
            if run.poll() is not None:
                raise SystemExit(f"master exited ({run.returncode}) before starting its head:\n"
                                 f"{run.stderr.read()[-3000:] if run.stderr else ''}")
            time.sleep(0.1)
        for name in names[1:]:
            net.hosts[name].popen(DEEPGRID + ["worker", "-ad", f"{master.address}:{PORT}", "--workers", "1",
                                              "--token-file", str(token)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Bytes are counted from the start of training: the data set's transfer to each host
        # (object store, once per host) happens at set-up and is reported apart.
        sent_before: dict[str, int] = {}
        lines = []
        # Every process's CPU from the start of training to its last epoch's line (/proc; cheap: the
        # table is made once, at the end): where the CPU went, and how much other people's work took.
        ticks_before: dict[tuple[int, int], tuple[int, str]] = {}
        started, window, training, host_of, machine_before = 0.0, {}, False, {}, {}
        assert run.stderr is not None
        for line in run.stderr:
            lines.append(line)
            if training and re.search(r"epoch \d+/\d+", line):  # the window ends at the last epoch's line
                window = {"ticks": cpu_ticks(), "seconds": time.monotonic() - started, "load": os.getloadavg(),
                          "ended_by": line.strip()[:100], "machine": machine_ticks()}
                host_of = host_of or {pid: name for name in names for pid in net.hosts[name].pids()}
            if "training mlp" in line and not sent_before:
                training = True
                sent_before = {name: net.bytes_sent(name) for name in names}
                ticks_before, machine_before, started = cpu_ticks(), machine_ticks(), time.monotonic()
        if window:
            window["table"] = cpu_table(ticks_before, window.pop("ticks"), window["seconds"], host_of)
            per_tick = 100.0 / os.sysconf("SC_CLK_TCK") / window["seconds"]
            window["machine"] = {k: (v - machine_before[k]) * per_tick for k, v in window["machine"].items()}
        out = run.stdout.read() if run.stdout else ""
        run.wait()
        sent = {name: net.bytes_sent(name) - sent_before.get(name, 0) for name in names}
        setup_bytes = sum(sent_before.get(name, 0) for name in names)
    if run.returncode != 0:
        raise SystemExit(f"master failed ({run.returncode}):\n{''.join(lines)[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    rounds = max(1, result["rounds"])
    table = window.get("table", ())
    others = sum(pct for host, label, pct in table if host == "outside" and label != "bench_hosts")
    # How busy the worker hosts' actors were, and their CPU per round: this machine's cores run at
    # varying speed (the same 100 mini-batches took 130 to 180 ms of CPU from one run to the next),
    # which moves samples/s, while the share of the time the actors could train is what the
    # overheads decide.
    actor = sum(pct for host, label, pct in table if host != "master" and label == "ray::Worker")
    seconds = window.get("seconds", 0.0)
    return {
        "hosts": n_hosts, "link": rate or "unlimited", "samples_per_s": result["samples_per_s"],
        "rounds": rounds, "s_per_round": result["elapsed_s"] / rounds,
        "master_bytes_per_round": sent["master"] / rounds,
        "worker_bytes_per_round": sum(sent[n] for n in names[1:]) / rounds / n_hosts,
        "setup_mb": setup_bytes / 1e6, "test_accuracy": result["test_accuracy"],
        "jobs_by_host": result["jobs_by_host"], "others_cpu_pct": others, "load": window.get("load", (0.0,))[0],
        "actor_busy_pct": actor / n_hosts, "actor_ms_per_round": actor / n_hosts * 10.0 * seconds / rounds,
        **({"cpu": window} if cpu and window else {}),
    }


def print_cpu(row: dict) -> None:
    window = row["cpu"]
    print(f"\nCPU while {row['hosts']} worker host(s) trained ({row['link']} link), {window['seconds']:.1f} s, "
          f"load average {window['load'][0]:.2f} at the end; % of one core (the machine has {os.cpu_count()}); "
          f"window ended by: {window['ended_by']}")
    # CPU time per round: steadier than a share of the wall clock while other work competes for the cores.
    per_round = 10.0 * window["seconds"] / row["rounds"]  # ms per round for each % of one core
    print("| host | process | CPU % | CPU ms / round |\n| --- | --- | ---: | ---: |")
    for host, label, pct in window["table"]:
        if pct >= 0.1:
            print(f"| {host} | {label} | {pct:.1f} | {pct * per_round:.1f} |")
    print(f"| all processes | | {sum(pct for _, _, pct in window['table']):.1f} | |")
    print(f"| idle | | {window['machine']['idle']:.1f} | |")
    print(f"| stolen by the hypervisor | | {window['machine']['stolen']:.1f} | |\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--averaging-frequency", "-k", type=int, default=100)
    parser.add_argument("--rates", default="none,1gbit,100mbit", help="links to try: none, or tc rates")
    parser.add_argument("--hosts", default="1,2", help="worker host counts to run: 1,2 (the ratio needs both), 1 or 2")
    parser.add_argument("--repeat", type=int, default=1, help="run each link's contenders this many times")
    parser.add_argument("--cpu", action="store_true", help="print each process's CPU while training (/proc)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a top-level setting added to the job's configuration, e.g. checkpoint_every=10 "
                             "(repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment setting for every host's processes, e.g. to try a RAY_ setting "
                             "against deepgrid's (repeatable)")
    args = parser.parse_args()
    why_not = unavailable()
    if why_not:
        raise SystemExit(f"bench_hosts: {why_not}")
    work = Path("/tmp/deepgrid-bench-hosts")
    work.mkdir(exist_ok=True)
    conf = write_conf(work / "conf.yaml", args.epochs, args.train_limit, args.averaging_frequency, args.set)
    env = dict(setting.split("=", 1) for setting in args.env)
    # Held while a contender runs (set-up included: the master cannot be paused at the start of
    # training), let go for a while past BenchLock's turn, so that other sessions' tests get theirs.
    lock = BenchLock("bench_hosts.py")
    rows = []
    try:
        for rate in args.rates.split(","):
            rate = None if rate == "none" else rate
            for _ in range(args.repeat):
                pair = []
                for n_hosts in sorted(int(n) for n in args.hosts.split(",")):
                    lock.before_contender()
                    row = run_one(n_hosts, rate, conf, work, cpu=args.cpu, env=env)
                    pair.append(row)
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "cpu"}), flush=True)
                    if "cpu" in row:
                        print_cpu(row)
                if len(pair) == 2:
                    pair[1]["ratio"] = pair[1]["samples_per_s"] / pair[0]["samples_per_s"]
                    # the ratio had both runs' actors trained at the same speed
                    pair[1]["busy_ratio"] = 2 * pair[1]["actor_busy_pct"] / max(pair[0]["actor_busy_pct"], 1e-9)
    finally:
        lock.release()
    print("\n| link | worker hosts | samples/s | 2 hosts / 1 host | rounds | s/round | master sent/round | "
          "each worker sent/round | set-up MB moved | test acc | actor busy | actor CPU ms/round | "
          "2 / 1 at equal speed | others' CPU | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
        busy_ratio = f"{row['busy_ratio']:.2f}" if "busy_ratio" in row else "-"
        print(f"| {row['link']} | {row['hosts']} | {row['samples_per_s']:,.0f} | {ratio} | {row['rounds']} | "
              f"{row['s_per_round']:.3f} | {row['master_bytes_per_round'] / 1e6:.2f} MB | "
              f"{row['worker_bytes_per_round'] / 1e6:.2f} MB | {row['setup_mb']:.0f} | {row['test_accuracy']:.4f} | "
              f"{row['actor_busy_pct']:.0f}% | {row['actor_ms_per_round']:.0f} | {busy_ratio} | "
              f"{row['others_cpu_pct']:.0f}% | {row['load']:.1f} |")
    for link in dict.fromkeys(row["link"] for row in rows):
        for key, what in (("ratio", "2 hosts / 1 host"), ("busy_ratio", "at equal actor speed")):
            ratios = sorted(row[key] for row in rows if row["link"] == link and key in row)
            if len(ratios) > 1:
                print(f"{link}: {what} {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
