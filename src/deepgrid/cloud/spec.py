"""A cluster's spec: the Conf's ``cloud:`` section resolved (name, region checked, resource names).

Everything here is offline: the region is checked against botocore's own list of EC2 regions (so
a typo is one line before any request), and every name ``up`` gives a resource derives from the
cluster name, so ``down`` and ``status`` find the same resources from the same Conf.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from deepgrid.config.cloud import CloudSection
from deepgrid.config.conf import Conf
from deepgrid.errors import ConfigError, invalid

TAG_CLUSTER = "deepgrid:cluster"  # on every resource `up` creates; `down` removes only these
TAG_ROLE = "deepgrid:role"  # master or worker, on instances
# A cluster name goes into a security group's name, an IAM role's (64 characters at most, with the
# region) and an SSM parameter's path.
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,35}")


@dataclass(frozen=True)
class ClusterSpec:
    """What one cluster is: its Conf, its cloud section and the names of its resources."""

    conf: Conf
    cloud: CloudSection
    name: str

    @property
    def region(self) -> str:
        return self.cloud.region

    @property
    def tags(self) -> list[dict[str, str]]:
        return [{"Key": TAG_CLUSTER, "Value": self.name}]

    @property
    def security_group_name(self) -> str:
        return f"deepgrid-{self.name}"

    @property
    def role_name(self) -> str:
        # IAM names are global to the account: the region keeps two regions' clusters apart.
        return f"deepgrid-{self.name}-{self.region}"

    @property
    def token_parameter(self) -> str:
        """The SSM SecureString holding the cluster's Ray token; only its role may read it."""
        return f"/deepgrid/{self.name}/ray-token"


def cluster_spec(conf: Conf, source: str = "the Conf") -> ClusterSpec:
    """The spec of ``conf``'s cloud section, or one line saying what is missing or wrong."""
    if conf.cloud is None:
        raise ConfigError(f"{source} has no `cloud:` section; add one with at least region and image "
                          "(see examples/aws.yaml and docs/aws.md).")
    cloud = CloudSection(**conf.cloud)
    check_region(cloud.region)
    name = cloud.cluster_name or conf.job_name
    if not _CLUSTER_NAME.fullmatch(name):
        field = "cloud.cluster_name" if cloud.cluster_name else "job_name"
        raise ConfigError(invalid(field, name, "1 to 36 letters, digits, '.', '_' or '-' (it names AWS resources)",
                                  "Set cloud.cluster_name to a short name like 'fmnist'."))
    return ClusterSpec(conf=conf, cloud=cloud, name=name)


def known_regions() -> list[str]:
    """EC2's regions as botocore (installed with boto3) lists them; empty when boto3 is missing."""
    try:
        import boto3
    except ImportError:
        return []
    return list(boto3.session.Session().get_available_regions("ec2"))


def check_region(region: str) -> None:
    regions = known_regions()
    if regions and region not in regions:
        close = difflib.get_close_matches(region, regions, n=1, cutoff=0.6)
        hint = f"Did you mean {close[0]!r}?" if close else "See https://docs.aws.amazon.com/general/latest/gr/ec2-service.html."
        raise ConfigError(invalid("cloud.region", region, "an AWS region such as eu-west-1", hint))

