"""``up``, ``down``, ``status``, ``add-workers``, ``remove-workers``: each returns a summary dict.

``up`` creates exactly what ``build_plan`` lists, in the order that lets each part find the one
before: the token and the role the hosts read it with, the security group, the master (whose
private address the workers' scripts name), then the workers. ``remove-workers`` terminates the
newest N workers and relies on deepgrid's fault tolerance: the master notices their missing
heartbeats and gives their jobs to the others (README: Faults), so no draining step is needed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from deepgrid.cloud import access
from deepgrid.cloud.aws import Aws
from deepgrid.cloud.instances import cluster_instances, describe_instance, launch, terminate
from deepgrid.cloud.plan import build_plan, plan_summary
from deepgrid.cloud.spec import TAG_CLUSTER, ClusterSpec
from deepgrid.cloud.userdata import worker_script
from deepgrid.errors import ClusterError, ConfigError, DeepgridError

PROGRESS_TIMEOUT_S = 3.0
DASHBOARD_TOKEN_ENV = "DEEPGRID_DASHBOARD_TOKEN"  # as `deepgrid status` reads it (deepgrid.dashboard.client)

Say = Callable[[str], None]


def up(aws: Aws, spec: ClusterSpec, say: Say) -> dict[str, Any]:
    plan = build_plan(spec)
    source = aws.require_credentials()
    running = cluster_instances(aws, spec)
    if running:
        raise ClusterError(f"Cluster {spec.name!r} is already up ({len(running)} instances); see `deepgrid cluster "
                           f"status`, grow it with `add-workers`, or take it down with `deepgrid cluster down` first.")
    access.check_exists(aws, spec)
    say(f"deepgrid: credentials from {source}; starting cluster {spec.name!r} in {spec.region}")
    try:
        access.ensure_token(aws, spec)
        access.ensure_role(aws, spec)
        group_id = access.ensure_security_group(aws, plan)
        say(f"deepgrid: security group {group_id}; Ray token in SSM {spec.token_parameter}; role {spec.role_name}")
        master = launch(aws, spec, "master", 1, plan.master_script, group_id)[0]
        master_ip = master["PrivateIpAddress"]
        say(f"deepgrid: master {master['InstanceId']} ({spec.cloud.master_instance_type}) at {master_ip}")
        workers = launch(aws, spec, "worker", spec.cloud.workers, worker_script(spec, master_ip), group_id)
    except DeepgridError as e:  # still one line, saying how to clean up what was made
        raise type(e)(f"{e} What `up` created so far is tagged {TAG_CLUSTER}={spec.name}: "
                      "`deepgrid cluster down CONF` removes it.") from None
    say(f"deepgrid: {len(workers)} workers ({spec.cloud.worker_instance_type}"
        f"{', spot' if spec.cloud.spot else ''}): {', '.join(w['InstanceId'] for w in workers)}")
    say("deepgrid: the hosts set themselves up (a few minutes); follow with: deepgrid cluster status CONF")
    return {**plan_summary(plan), "security_group": group_id, "master": master["InstanceId"],
            "master_private_ip": master_ip, "workers": [w["InstanceId"] for w in workers]}


def down(aws: Aws, spec: ClusterSpec, say: Say) -> dict[str, Any]:
    """Remove every resource tagged with this cluster's name, and nothing else."""
    aws.require_credentials()
    ids = [i["InstanceId"] for i in cluster_instances(aws, spec)]
    if ids:
        say(f"deepgrid: terminating {len(ids)} instances of cluster {spec.name!r} and waiting for them to end")
    terminate(aws, ids, wait=True)  # the security group can go only once no instance uses it
    groups = access.delete_security_groups(aws, spec)
    parameters = access.delete_token(aws, spec)
    roles = access.delete_role(aws, spec)
    say(f"deepgrid: cluster {spec.name!r} is down: {len(ids)} instances terminated, security groups {groups or 'none'}, "
        f"token {parameters or 'none'}, {', '.join(roles) or 'no role'} deleted")
    return {"cluster": spec.name, "terminated": ids, "security_groups": groups, "parameters": parameters,
            "roles": roles}


def status(aws: Aws, spec: ClusterSpec) -> dict[str, Any]:
    aws.require_credentials()
    instances = [describe_instance(i) for i in cluster_instances(aws, spec)]
    groups = [g["GroupId"] for g in access.cluster_security_groups(aws, spec)]
    master = next((i for i in instances if i["role"] == "master" and i["state"] == "running"), None)
    return {"cluster": spec.name, "region": spec.region, "instances": instances, "security_groups": groups,
            "progress": progress(spec, master)}


def progress(spec: ClusterSpec, master: dict[str, Any] | None) -> dict[str, Any]:
    """The run as the master's dashboard tells it, or why it cannot: ``{"state": "unreachable", ...}``."""
    if master is None:
        return {"state": "unreachable", "why": "no running master"}
    if not spec.cloud.allowed_cidr or not master.get("public_ip"):
        return {"state": "unreachable", "why": "the dashboard is closed (no cloud.allowed_cidr or no public IP)"}
    url = f"http://{master['public_ip']}:{spec.cloud.dashboard_port}/api/run"
    token = os.environ.get(DASHBOARD_TOKEN_ENV)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=PROGRESS_TIMEOUT_S) as response:
            return {"state": "reachable", "url": url, "run": json.loads(response.read().decode("utf-8"))}
    except urllib.error.HTTPError as e:
        if e.code == 401:
            return {"state": "unreachable", "url": url, "why": f"the dashboard needs its token: set {DASHBOARD_TOKEN_ENV} "
                    "(the master prints it: aws ec2 get-console-output --instance-id " + master["id"] + ")"}
        return {"state": "unreachable", "url": url, "why": f"HTTP {e.code}"}
    except (OSError, ValueError) as e:
        return {"state": "unreachable", "url": url, "why": str(getattr(e, "reason", e))}


def add_workers(aws: Aws, spec: ClusterSpec, count: int, say: Say) -> dict[str, Any]:
    """Start ``count`` more worker hosts with the same start-up script; they join from the next round."""
    master = _running_master(aws, spec)
    plan = build_plan(spec)
    group_id = plan.security_group if not plan.create_security_group else _cluster_group(aws, spec)
    workers = launch(aws, spec, "worker", count, worker_script(spec, master["PrivateIpAddress"]), group_id)
    say(f"deepgrid: {len(workers)} more workers for cluster {spec.name!r}: {', '.join(w['InstanceId'] for w in workers)}")
    return {"cluster": spec.name, "added": [w["InstanceId"] for w in workers],
            "workers": len(cluster_instances(aws, spec, "worker"))}


def remove_workers(aws: Aws, spec: ClusterSpec, count: int, say: Say) -> dict[str, Any]:
    """Terminate the newest ``count`` workers; the master hands their jobs to the others."""
    workers = cluster_instances(aws, spec, "worker", states=("pending", "running"))
    if count > len(workers):
        raise ConfigError(f"Cluster {spec.name!r} has {len(workers)} running workers; cannot remove {count}.")
    gone = [w["InstanceId"] for w in workers[len(workers) - count:]]
    terminate(aws, gone, wait=False)
    say(f"deepgrid: terminated {count} workers of cluster {spec.name!r}: {', '.join(gone)}; "
        "the master gives their jobs to the others")
    return {"cluster": spec.name, "removed": gone, "workers": len(workers) - count}


def _running_master(aws: Aws, spec: ClusterSpec) -> dict[str, Any]:
    masters = cluster_instances(aws, spec, "master", states=("pending", "running"))
    if not masters:
        raise ClusterError(f"Cluster {spec.name!r} has no running master; start it with `deepgrid cluster up CONF`.")
    return masters[-1]


def _cluster_group(aws: Aws, spec: ClusterSpec) -> str:
    groups = access.cluster_security_groups(aws, spec)
    if not groups:
        raise ClusterError(f"Cluster {spec.name!r} has no security group; was it started with `deepgrid cluster up`?")
    return str(groups[0]["GroupId"])

