"""What ``up`` creates, as data: ``plan`` prints it and ``up`` creates exactly it.

The plan is built from the spec alone (no request), so ``plan`` creates nothing and ``up``'s tests
can compare what moto holds afterwards with the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepgrid.cloud.prices import PRICES_DATE, hourly_price
from deepgrid.cloud.spec import ClusterSpec
from deepgrid.cloud.userdata import MASTER_IP_PLACEHOLDER, master_script, worker_script


@dataclass(frozen=True)
class InstanceGroup:
    role: str  # "master" or "worker"
    count: int
    instance_type: str
    spot: bool

    @property
    def market(self) -> str:
        return "spot" if self.spot else "on-demand"


@dataclass(frozen=True)
class IngressRule:
    protocol: str  # "-1": every protocol
    port: int | None  # None: every port
    source: str  # "the group itself" or a CIDR block

    def describe(self) -> str:
        what = "all traffic" if self.protocol == "-1" else f"{self.protocol} port {self.port}"
        return f"{what} from {self.source}"


SELF = "the group itself"


@dataclass(frozen=True)
class Plan:
    spec: ClusterSpec
    instances: tuple[InstanceGroup, ...]
    security_group: str  # an existing id, or the name of the group `up` creates
    create_security_group: bool
    rules: tuple[IngressRule, ...]
    master_script: str
    worker_script: str  # with MASTER_IP_PLACEHOLDER where the master's private IP goes

    def cost_per_hour(self) -> tuple[float, list[str]]:
        """USD per hour of the listed instances, and the types the price table does not list."""
        total, unknown = 0.0, []
        for group in self.instances:
            price = hourly_price(self.spec.region, group.instance_type)
            if price is None:
                unknown.append(group.instance_type)
            else:
                total += price * group.count
        return total, unknown


def build_plan(spec: ClusterSpec) -> Plan:
    cloud = spec.cloud
    instances = (InstanceGroup("master", 1, cloud.master_instance_type, spot=False),
                 InstanceGroup("worker", cloud.workers, cloud.worker_instance_type, spot=cloud.spot))
    rules = [IngressRule("-1", None, SELF)]
    if cloud.allowed_cidr:
        rules.append(IngressRule("tcp", cloud.dashboard_port, cloud.allowed_cidr))
    return Plan(spec=spec, instances=instances,
                security_group=cloud.security_group_id or spec.security_group_name,
                create_security_group=cloud.security_group_id is None, rules=tuple(rules),
                master_script=master_script(spec), worker_script=worker_script(spec, MASTER_IP_PLACEHOLDER))


def format_plan(plan: Plan) -> str:
    spec, cloud = plan.spec, plan.spec.cloud
    tag = f"deepgrid:cluster={spec.name}"
    lines = [f"deepgrid cluster {spec.name!r} in {spec.region} (job {spec.conf.job_name!r}, model {spec.conf.model}); "
             f"`up` would create, each tagged {tag}:"]
    for group in plan.instances:
        lines.append(f"  {group.count} x {group.role} {group.instance_type} ({group.market}), image {cloud.image}"
                     + (f", subnet {cloud.subnet_id}" if cloud.subnet_id else ", the default VPC's subnet")
                     + (f", key pair {cloud.key_name}" if cloud.key_name else ", no key pair"))
    if plan.create_security_group:
        lines.append(f"  security group {plan.security_group} (no SSH), ingress:")
    else:
        lines.append(f"  (using security group {plan.security_group}; `up` adds these ingress rules to it:)")
    lines += [f"    {rule.describe()}" for rule in plan.rules]
    if not cloud.allowed_cidr:
        lines.append("    (the dashboard stays closed: set cloud.allowed_cidr to your address/32 to open it)")
    lines += [f"  SSM SecureString parameter {spec.token_parameter}: the Ray token (generated), readable only by",
              f"  IAM role and instance profile {spec.role_name} (ec2 may assume it; ssm:GetParameter on that parameter)"]
    total, unknown = plan.cost_per_hour()
    known = f"${total:.3f}/h on demand" + (f" + the price of {', '.join(sorted(set(unknown)))} (price unknown)"
                                           if unknown else "")
    spot = "; spot workers cost at most their on-demand price" if cloud.spot else ""
    lines += [f"Cost: {known}{spot} (prices of {PRICES_DATE}, deepgrid.cloud.prices; check aws.amazon.com/ec2/pricing).",
              "", "The master's start-up script:", plan.master_script,
              "Each worker's start-up script:", plan.worker_script]
    return "\n".join(lines)


def plan_summary(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (``--json``)."""
    total, unknown = plan.cost_per_hour()
    return {"cluster": plan.spec.name, "region": plan.spec.region,
            "instances": [{"role": g.role, "count": g.count, "type": g.instance_type, "market": g.market}
                          for g in plan.instances],
            "security_group": plan.security_group, "create_security_group": plan.create_security_group,
            "ingress": [r.describe() for r in plan.rules], "token_parameter": plan.spec.token_parameter,
            "role": plan.spec.role_name, "usd_per_hour": round(total, 4), "price_unknown": sorted(set(unknown)),
            "prices_date": PRICES_DATE}
