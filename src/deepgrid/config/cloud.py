"""A Conf's ``cloud:`` section: where ``deepgrid cluster up`` starts the cluster (issue 12).

Pure data, checked when the Conf loads, so a typo in it is one line at once and not at ``up``.
What only AWS can tell (is the AMI there, does the region offer the instance type) is asked by
``deepgrid.cloud`` when a ``cluster`` command runs; config may not import it (tests/unit/test_layers.py).
The section holds no credentials: boto3's standard chain (environment, profile, instance role)
supplies them, so a Conf file can be shared and registered as it is.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any

from deepgrid.config.validation import POSITIVE_INT, Rule, check, reject_unknown_keys
from deepgrid.errors import ConfigError, invalid

# The Ray dashboard's usual port: a user's firewall rules often already name it.
DEFAULT_DASHBOARD_PORT = 8265
# deepgrid itself is installed on every host with pip; a wheel's URL or a git URL works as well.
DEFAULT_INSTALL = "deepgrid[cluster,aws]"

RULES: dict[str, Rule] = {
    "region": Rule("str"),
    "image": Rule("str"),
    "master_instance_type": Rule("str"),
    "worker_instance_type": Rule("str"),
    "workers": POSITIVE_INT,
    "spot": Rule("bool"),
    "subnet_id": Rule("opt_str"),
    "security_group_id": Rule("opt_str"),
    "key_name": Rule("opt_str"),
    "cluster_name": Rule("opt_str"),
    "allowed_cidr": Rule("opt_str"),
    "dashboard_port": Rule("int", low=1, high=65535),
    "install": Rule("str"),
}
_AMI = re.compile(r"ami-[0-9a-f]{8,17}")
_RESOURCE_ID = {"subnet_id": re.compile(r"subnet-[0-9a-f]{8,17}"), "security_group_id": re.compile(r"sg-[0-9a-f]{8,17}")}


@dataclass(frozen=True)
class CloudSection:
    """The ``cloud:`` keys as given, checked. ``cluster_name`` None: the Conf's job_name."""

    region: str
    image: str  # an AMI id; the start-up scripts assume Debian 12 (apt-get, redis-server, zookeeperd)
    master_instance_type: str = "m5.large"
    worker_instance_type: str = "m5.large"
    workers: int = 2  # worker hosts (each runs one worker actor per CPU core)
    spot: bool = False  # the workers as spot instances; the master is always on-demand
    subnet_id: str | None = None  # None: the default VPC's default subnet
    security_group_id: str | None = None  # None: `up` creates one for the cluster
    key_name: str | None = None  # an EC2 key pair for the hosts; no SSH port is opened either way
    cluster_name: str | None = None
    allowed_cidr: str | None = None  # who may open the dashboard, e.g. 203.0.113.7/32; None: nobody
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    install: str = DEFAULT_INSTALL  # what each host pip-installs

    def __post_init__(self) -> None:
        for name, rule in RULES.items():
            object.__setattr__(self, name, check(f"cloud.{name}", getattr(self, name), rule))
        if not _AMI.fullmatch(self.image):
            raise ConfigError(invalid("cloud.image", self.image, "an AMI id like ami-0123456789abcdef0"))
        for name, pattern in _RESOURCE_ID.items():
            value = getattr(self, name)
            if value is not None and not pattern.fullmatch(value):
                raise ConfigError(invalid(f"cloud.{name}", value, f"an id like {pattern.pattern[:7]}0123abcd or null"))
        if self.allowed_cidr is not None:
            try:
                ipaddress.ip_network(self.allowed_cidr, strict=False)
            except ValueError:
                raise ConfigError(invalid("cloud.allowed_cidr", self.allowed_cidr, "a CIDR block like 203.0.113.7/32",
                                          "Give your own address with /32, or null to keep the dashboard closed.")) from None


def check_cloud(value: Any) -> dict[str, Any] | None:
    """The ``cloud:`` section checked: None, or the mapping as given (the Conf keeps plain data, so
    it saves and prints as it loaded)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(invalid("cloud", value, "a mapping of cloud settings (region, image, ...) or null"))
    reject_unknown_keys("the cloud section", value, [f.name for f in fields(CloudSection)])
    for required in ("region", "image"):
        if required not in value:
            raise ConfigError(f"The cloud section needs `{required}` "
                              f"({'e.g. eu-west-1' if required == 'region' else 'an AMI id, e.g. a Debian 12 image'}).")
    CloudSection(**value)
    return dict(value)
