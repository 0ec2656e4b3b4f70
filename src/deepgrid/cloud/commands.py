"""``deepgrid cluster plan|up|down|status|add-workers|remove-workers CONF``: a cluster on AWS from a Conf.

Argument parsing and printing only; the work is in deepgrid.cloud.operations. A mistake (no cloud
section, a region typo, an unknown instance type, missing or refused credentials) is one line and
exit status 2, as everywhere in deepgrid.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from deepgrid.config.arg_types import positive_int


def log(message: str) -> None:
    logging.getLogger("deepgrid").info(message)  # stderr, timestamped; -q hides it (train/logs.py)


def add_cluster_commands(sub: Any) -> None:
    """``deepgrid cluster ...`` (see docs/aws.md)."""
    cluster = sub.add_parser("cluster", help="start, watch, resize and remove a deepgrid cluster on AWS",
                             description="A deepgrid cluster on AWS EC2 from a Conf's cloud: section "
                                         "(credentials from the AWS standard chain; see docs/aws.md).")
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    actions.required = True
    helps = {
        "plan": ("print what `up` would create and its cost per hour; creates nothing", cmd_plan),
        "up": ("create the security group, token, role, master and workers; each host sets itself up", cmd_up),
        "down": ("terminate and delete every resource tagged with the cluster's name", cmd_down),
        "status": ("list the cluster's resources and their state, and the run's progress", cmd_status),
        "add-workers": ("start N more worker hosts that join the running job", cmd_add_workers),
        "remove-workers": ("terminate the newest N worker hosts (their jobs go to the others)", cmd_remove_workers),
    }
    for name, (text, func) in helps.items():
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("conf", metavar="CONF", help="a YAML or JSON Conf file with a cloud: section")
        if name in ("add-workers", "remove-workers"):
            action.add_argument("count", metavar="N", type=positive_int, help="how many worker hosts")
        action.add_argument("--json", action="store_true", help="end with one JSON line of results on stdout")
        action.set_defaults(func=func)


def _spec(args: argparse.Namespace) -> Any:
    from deepgrid.cloud.spec import cluster_spec
    from deepgrid.config.conf import Conf

    return cluster_spec(Conf.load(args.conf), args.conf)


def _aws(spec: Any) -> Any:
    from deepgrid.cloud.aws import Aws

    return Aws(spec.region)


def cmd_plan(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.cloud.plan import build_plan, format_plan, plan_summary

    plan = build_plan(_spec(args))
    if not args.json:
        print(format_plan(plan))
    return plan_summary(plan)


def cmd_up(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.cloud.operations import up

    spec = _spec(args)
    return up(_aws(spec), spec, log)


def cmd_down(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.cloud.operations import down

    spec = _spec(args)
    return down(_aws(spec), spec, log)


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.cloud.operations import status

    spec = _spec(args)
    found = status(_aws(spec), spec)
    if not args.json:
        print(format_status(found))
    return found


def cmd_add_workers(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.cloud.operations import add_workers

    spec = _spec(args)
    return add_workers(_aws(spec), spec, args.count, log)


def cmd_remove_workers(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.cloud.operations import remove_workers

    spec = _spec(args)
    return remove_workers(_aws(spec), spec, args.count, log)


def format_status(found: dict[str, Any]) -> str:
    lines = [f"cluster {found['cluster']} in {found['region']}: {len(found['instances'])} instances"]
    for i in found["instances"]:
        lines.append(f"  {i['id']}  {i['role']:<6}  {i['type']:<12} {i['market']:<9} {i['state']:<9} "
                     f"private {i['private_ip'] or '-'}  public {i['public_ip'] or '-'}  since {i['launched']}")
    lines.append(f"security groups: {', '.join(found['security_groups']) or 'none'}")
    progress = found["progress"]
    if progress["state"] == "reachable":
        lines.append(f"progress ({progress['url']}): {json.dumps(progress['run'], sort_keys=True)}")
    else:
        lines.append(f"progress: unreachable ({progress.get('why', '')})")
    return "\n".join(lines)
