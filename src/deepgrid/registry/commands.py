"""``deepgrid conf push|get|list``: the configuration registry from the command line (see deepgrid.registry)."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def log(message: str) -> None:
    logging.getLogger("deepgrid").info(message)  # stderr, timestamped; -q hides it (train/logs.py)


def add_conf_commands(sub: Any) -> None:
    """``deepgrid conf push|get|list``: the configuration registry (see deepgrid.registry)."""
    registry_help = ("the registry: zk://host:2181/deepgrid, file:///dir or a directory "
                     "(default: $DEEPGRID_REGISTRY, then $DEEPGRID_HOME/registry)")
    conf = sub.add_parser("conf", help="store and read job configurations in the registry (ZooKeeper or files)",
                          description="The configuration registry: workers find a job's master by its name.")
    conf_sub = conf.add_subparsers(dest="conf_command", metavar="ACTION")
    conf_sub.required = True
    push = conf_sub.add_parser("push", help="register a Conf file under a job name",
                               description="Register CONF under --name (default: its job_name).")
    push.add_argument("conf", metavar="CONF", help="a YAML or JSON Conf file")
    push.add_argument("--name", help="the job name to register it under (default: the Conf's job_name)")
    push.add_argument("--registry", metavar="URL",
                      help=registry_help.replace("(default: ", "(default: the Conf's registry_url, "))
    push.set_defaults(func=cmd_conf_push)
    get = conf_sub.add_parser("get", help="print a registered Conf as YAML (secrets masked)")
    get.add_argument("name", metavar="NAME")
    get.add_argument("--registry", metavar="URL", help=registry_help)
    get.set_defaults(func=cmd_conf_get)
    listing = conf_sub.add_parser("list", help="list the registered job names")
    listing.add_argument("--registry", metavar="URL", help=registry_help)
    listing.set_defaults(func=cmd_conf_list)


def cmd_conf_push(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.config.conf import Conf
    from deepgrid.registry import registry_from_url, resolve_registry_url
    from deepgrid.registry.base import check_job_name

    conf = Conf.load(args.conf)
    name = check_job_name(args.name or conf.job_name)
    registry = registry_from_url(resolve_registry_url(args.registry, conf))
    try:
        registry.register(name, conf)
    finally:
        registry.close()
    log(f"deepgrid: registered job {name!r} in {registry.url}")
    return {"name": name, "registry": registry.url}


def cmd_conf_get(args: argparse.Namespace) -> None:
    from deepgrid.registry import registry_from_url, resolve_registry_url

    registry = registry_from_url(resolve_registry_url(args.registry))
    try:
        conf = registry.retrieve(args.name)
    finally:
        registry.close()
    print(conf.describe(), end="")


def cmd_conf_list(args: argparse.Namespace) -> None:
    from deepgrid.registry import registry_from_url, resolve_registry_url

    registry = registry_from_url(resolve_registry_url(args.registry))
    try:
        names = registry.list()
    finally:
        registry.close()
    for name in names:
        print(name)
