"""The hosts' start-up scripts (EC2 user data): each host sets itself up, so ``up`` needs no SSH.

Both scripts assume a Debian 12 image (apt-get; Debian's redis-server, zookeeperd and, for the
Fashion-MNIST, dataset-fashion-mnist). Each one installs deepgrid into /opt/deepgrid, reads the
cluster's Ray token from its SSM SecureString parameter (readable only with the cluster's instance
role) into /root/.ray/auth_token (mode 0600 from the start), and starts one systemd unit:

- master: Redis (state, loopback only) and ZooKeeper (the registry the workers look the job up
  in) as Debian starts them, then ``deepgrid master`` on the host's private address, the dashboard
  on every interface (the security group decides who reaches it); it trains once ``workers`` worker
  actors are present (each host brings one per core), and later ones join from the next round;
- worker: ``deepgrid worker --registry zk://MASTER:2181/deepgrid --job NAME``, restarted every 10 s
  until the master has registered the job (a worker may boot before its master).

The units' output goes to the journal and to the console (``aws ec2 get-console-output``), where
the master's dashboard URL and token are printed.
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from deepgrid.cloud.spec import ClusterSpec
from deepgrid.config.conf import Conf
from deepgrid.errors import ConfigError

REGISTRY_PATH = "/deepgrid"
ZOOKEEPER_PORT = 2181
VENV = "/opt/deepgrid"
TOKEN_FILE = "/root/.ray/auth_token"
CONF_FILE = "/etc/deepgrid/conf.yaml"
MAX_USER_DATA = 16 * 1024  # EC2's limit, before base64
MASTER_IP_PLACEHOLDER = "MASTER_PRIVATE_IP"  # in `plan`: the master is not started yet


def registry_url(master_ip: str) -> str:
    return f"zk://{master_ip}:{ZOOKEEPER_PORT}{REGISTRY_PATH}"


def master_command(spec: ClusterSpec) -> list[str]:
    """``deepgrid master ...`` as the master host runs it (``$IP``: its private address)."""
    return [f"{VENV}/bin/deepgrid", "master", CONF_FILE, "--bind", "$IP", "--min-workers", str(spec.cloud.workers),
            "--state", "redis://127.0.0.1:6379/0", "--registry", registry_url("127.0.0.1"),
            "--dashboard", f"0.0.0.0:{spec.cloud.dashboard_port}"]


def worker_command(spec: ClusterSpec, master_ip: str) -> list[str]:
    """``deepgrid worker --registry ... --job ...`` as every worker host runs it."""
    return [f"{VENV}/bin/deepgrid", "worker", "--registry", registry_url(master_ip), "--job", spec.conf.job_name,
            "-a", spec.conf.model, "--token-file", TOKEN_FILE]


def master_script(spec: ClusterSpec) -> str:
    packages = ["redis-server", "zookeeperd", *data_packages(spec)]
    conf_yaml = yaml.safe_dump(changed_settings(spec.conf), sort_keys=False)
    body = [
        "systemctl enable --now redis-server zookeeper",
        f"install -d -m 755 {CONF_FILE.rsplit('/', 1)[0]}",
        f"cat > {CONF_FILE} <<'DEEPGRID_CONF'\n{conf_yaml}DEEPGRID_CONF",
        "IP=$(hostname -I | awk '{print $1}')",
        _unit("deepgrid-master", [_quote(word) for word in master_command(spec)], restart=False),
    ]
    return _script(spec, "master", packages, body)


def worker_script(spec: ClusterSpec, master_ip: str) -> str:
    command = [shlex.quote(word) for word in worker_command(spec, master_ip)]
    # With data_feed: files each worker reads the data from its own disk; else the master sends it.
    packages = data_packages(spec) if spec.conf.data_feed == "files" else []
    return _script(spec, "worker", packages, [_unit("deepgrid-worker", command, restart=True)])


def changed_settings(conf: Conf) -> dict[str, Any]:
    """The Conf the master trains: the settings that differ from the defaults, so the script stays
    short and readable. URL passwords are masked (its --state flag names the Redis it uses); the
    cloud section stays in, so the run's record says where it ran."""
    given, default = conf.public_dict(), Conf().public_dict()
    out = {k: v for k, v in given.items() if k != "network" and v != default[k]}
    network = {k: v for k, v in given["network"].items() if v != default["network"][k]}
    return {"network": network, **out} if network else out


def data_packages(spec: ClusterSpec) -> list[str]:
    """Debian's copy of Fashion-MNIST where the Conf reads it from the default place."""
    return ["dataset-fashion-mnist"] if spec.conf.dataset == "fashion-mnist" and spec.conf.data_dir is None else []


def _quote(word: str) -> str:
    return '"$IP"' if word == "$IP" else shlex.quote(word)


def _unit(name: str, command: list[str], *, restart: bool) -> str:
    properties = ["--property=StandardOutput=journal+console", "--property=StandardError=journal+console",
                  "--property=WorkingDirectory=/var/lib/deepgrid", "--setenv=HOME=/root",
                  f"--setenv=RAY_AUTH_TOKEN_PATH={TOKEN_FILE}"]
    if restart:
        properties += ["--property=Restart=on-failure", "--property=RestartSec=10"]
    return f"systemd-run --unit={name} {' '.join(properties)} \\\n  {' '.join(command)}"


def _script(spec: ClusterSpec, role: str, packages: list[str], body: list[str]) -> str:
    read_token = (f'import boto3; print(boto3.client("ssm", region_name="{spec.region}").get_parameter('
                  f'Name="{spec.token_parameter}", WithDecryption=True)["Parameter"]["Value"])')
    lines = [
        "#!/bin/bash",
        f"# deepgrid cluster {spec.name}: the {role} host (written by `deepgrid cluster up`)",
        "set -euo pipefail",
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update -q",
        f"apt-get install -y -q {' '.join(['python3-venv', *packages])}",
        f"python3 -m venv {VENV}",
        f"{VENV}/bin/pip install -q {shlex.quote(spec.cloud.install)}",
        "umask 077  # the token file is the owner's alone from its first byte",
        f"install -d -m 700 {TOKEN_FILE.rsplit('/', 1)[0]} /var/lib/deepgrid",
        f"{VENV}/bin/python -c {shlex.quote(read_token)} > {TOKEN_FILE}",
        "umask 022",
        *body,
    ]
    script = "\n".join(lines) + "\n"
    if len(script.encode()) > MAX_USER_DATA:
        raise ConfigError(f"The {role} host's start-up script is {len(script.encode())} bytes; EC2 takes at most "
                          f"{MAX_USER_DATA}. Shorten the Conf (its network section is copied into the script).")
    return script
