"""The cluster's EC2 instances: launch them with their start-up scripts, find them by tag, end them."""

from __future__ import annotations

import time
from typing import Any

from deepgrid.cloud.aws import Aws, aws_errors, error_code, error_message
from deepgrid.cloud.spec import TAG_CLUSTER, TAG_ROLE, ClusterSpec

LIVE_STATES = ("pending", "running", "stopping", "stopped")
# A new instance profile takes a few seconds to be usable by EC2 (IAM is eventually consistent).
PROFILE_RETRY_S = (2, 4, 8, 16)


def launch(aws: Aws, spec: ClusterSpec, role: str, count: int, user_data: str, group_id: str) -> list[dict[str, Any]]:
    """Start ``count`` instances of ``role`` (master or worker), tagged, each running ``user_data``."""
    import botocore.exceptions as bx

    cloud = spec.cloud
    tags = [*spec.tags, {"Key": TAG_ROLE, "Value": role}, {"Key": "Name", "Value": f"{spec.name}-{role}"}]
    request: dict[str, Any] = {
        "ImageId": cloud.image, "MinCount": count, "MaxCount": count, "UserData": user_data,
        "InstanceType": cloud.master_instance_type if role == "master" else cloud.worker_instance_type,
        "SecurityGroupIds": [group_id], "IamInstanceProfile": {"Name": spec.role_name},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": spec.tags}],
        # IMDSv2 only: the role's credentials are not readable through a forwarded plain GET.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
    }
    if cloud.subnet_id:
        request["SubnetId"] = cloud.subnet_id
    if cloud.key_name:
        request["KeyName"] = cloud.key_name
    if role == "worker" and cloud.spot:
        request["InstanceMarketOptions"] = {"MarketType": "spot",
                                            "SpotOptions": {"SpotInstanceType": "one-time",
                                                            "InstanceInterruptionBehavior": "terminate"}}
    with aws_errors(f"start the {role} host{'s' if count > 1 else ''}"):
        for wait_s in (*PROFILE_RETRY_S, None):
            try:
                return list(aws.ec2.run_instances(**request)["Instances"])
            except bx.ClientError as e:
                profile_not_ready = (error_code(e) == "InvalidParameterValue"
                                     and "instance profile" in error_message(e).lower())
                if not profile_not_ready or wait_s is None:
                    raise
                time.sleep(wait_s)
    raise AssertionError("unreachable")  # the loop returns or raises


def cluster_instances(aws: Aws, spec: ClusterSpec, role: str | None = None,
                      states: tuple[str, ...] = LIVE_STATES) -> list[dict[str, Any]]:
    """The cluster's instances (by its tag) in ``states``, oldest first."""
    filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [spec.name]},
               {"Name": "instance-state-name", "Values": list(states)}]
    if role:
        filters.append({"Name": f"tag:{TAG_ROLE}", "Values": [role]})
    with aws_errors("list the cluster's instances"):
        pages = aws.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
    return sorted(found, key=lambda i: (i["LaunchTime"], i["InstanceId"]))


def role_of(instance: dict[str, Any]) -> str:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == TAG_ROLE), "?")


def terminate(aws: Aws, ids: list[str], wait: bool) -> None:
    """Terminate ``ids``; with ``wait``, return once they are gone (so their security group can go)."""
    if not ids:
        return
    with aws_errors("terminate the cluster's instances"):
        aws.ec2.terminate_instances(InstanceIds=ids)
        if wait:
            aws.ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 120})


def describe_instance(instance: dict[str, Any]) -> dict[str, Any]:
    return {"id": instance["InstanceId"], "role": role_of(instance), "type": instance["InstanceType"],
            "market": instance.get("InstanceLifecycle", "on-demand"), "state": instance["State"]["Name"],
            "private_ip": instance.get("PrivateIpAddress"), "public_ip": instance.get("PublicIpAddress"),
            "launched": instance["LaunchTime"].isoformat()}
