"""The cluster's access: its security group, its Ray token in SSM and the instance role that reads it.

Each ``ensure_*`` creates the resource tagged with the cluster's name, or finds the one a
previous ``up`` created (a rerun after a half-finished ``up`` goes on). Each ``delete_*`` removes
only a resource carrying that tag: a user's own security group, given as cloud.security_group_id,
is left in place.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from deepgrid.cloud.aws import Aws, aws_errors, error_code
from deepgrid.cloud.plan import SELF, Plan
from deepgrid.cloud.spec import TAG_CLUSTER, ClusterSpec
from deepgrid.errors import ClusterError, ConfigError

TOKEN_BYTES = 32  # as Ray makes its own (secrets.token_hex(32)): 256 bits


def is_ours(tags: list[dict[str, str]] | None, spec: ClusterSpec) -> bool:
    return any(t.get("Key") == TAG_CLUSTER and t.get("Value") == spec.name for t in tags or [])


# -- the Ray token -----------------------------------------------------------------------------
def ensure_token(aws: Aws, spec: ClusterSpec) -> bool:
    """Put a new random token in the cluster's SecureString parameter; False when it was there."""
    import botocore.exceptions as bx

    with aws_errors("store the cluster's Ray token in SSM"):
        try:
            aws.ssm.put_parameter(Name=spec.token_parameter, Type="SecureString", Tags=spec.tags,
                                  Value=secrets.token_hex(TOKEN_BYTES),
                                  Description=f"deepgrid cluster {spec.name}: the Ray token")
            return True
        except bx.ClientError as e:
            if error_code(e) != "ParameterAlreadyExists":
                raise
        if not is_ours(_parameter_tags(aws, spec), spec):
            raise ConfigError(f"The SSM parameter {spec.token_parameter} exists and is not tagged "
                              f"{TAG_CLUSTER}={spec.name}; delete it or pick another cloud.cluster_name.")
        return False


def _parameter_tags(aws: Aws, spec: ClusterSpec) -> list[dict[str, str]] | None:
    """The parameter's tags, or None when there is no such parameter."""
    import botocore.exceptions as bx

    try:
        return aws.ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=spec.token_parameter)["TagList"]
    except bx.ClientError as e:
        if error_code(e) in ("InvalidResourceId", "ParameterNotFound"):
            return None
        raise


def delete_token(aws: Aws, spec: ClusterSpec) -> list[str]:
    with aws_errors("delete the cluster's Ray token"):
        if is_ours(_parameter_tags(aws, spec), spec):
            aws.ssm.delete_parameter(Name=spec.token_parameter)
            return [spec.token_parameter]
    return []


# -- the instance role -------------------------------------------------------------------------
def _assume_role_policy() -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def _read_token_policy(spec: ClusterSpec) -> str:
    arn = f"arn:aws:ssm:{spec.region}:*:parameter{spec.token_parameter}"
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": arn}]})


def ensure_role(aws: Aws, spec: ClusterSpec) -> str:
    """The cluster's instance profile (and role): may read its token and nothing else."""
    import botocore.exceptions as bx

    name = spec.role_name
    with aws_errors("create the cluster's instance role"):
        try:
            aws.iam.create_role(RoleName=name, AssumeRolePolicyDocument=_assume_role_policy(), Tags=spec.tags,
                                Description=f"deepgrid cluster {spec.name}: reads its Ray token")
        except bx.ClientError as e:
            if error_code(e) != "EntityAlreadyExists":
                raise
            if not is_ours(aws.iam.list_role_tags(RoleName=name)["Tags"], spec):
                raise ConfigError(f"The IAM role {name} exists and is not tagged {TAG_CLUSTER}={spec.name}; "
                                  "pick another cloud.cluster_name.") from None
        aws.iam.put_role_policy(RoleName=name, PolicyName="read-ray-token", PolicyDocument=_read_token_policy(spec))
        try:
            aws.iam.create_instance_profile(InstanceProfileName=name, Tags=spec.tags)
        except bx.ClientError as e:
            if error_code(e) != "EntityAlreadyExists":
                raise
        roles = aws.iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
        if not any(r["RoleName"] == name for r in roles):
            aws.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def _iam_entity(call: Callable[..., dict[str, Any]], field: str, **names: str) -> Any:
    """``call(**names)[field]``, or None when IAM has no such entity (down after a half-done up, or twice)."""
    import botocore.exceptions as bx

    try:
        return call(**names)[field]
    except bx.ClientError as e:
        if error_code(e) != "NoSuchEntity":
            raise
        return None


def delete_role(aws: Aws, spec: ClusterSpec) -> list[str]:
    name, deleted = spec.role_name, []
    with aws_errors("delete the cluster's instance role"):
        profile = _iam_entity(aws.iam.get_instance_profile, "InstanceProfile", InstanceProfileName=name)
        if profile is not None and is_ours(profile.get("Tags"), spec):
            for role in profile["Roles"]:
                aws.iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
            aws.iam.delete_instance_profile(InstanceProfileName=name)
            deleted.append(f"instance profile {name}")
        tags = _iam_entity(aws.iam.list_role_tags, "Tags", RoleName=name)
        if tags is not None and is_ours(tags, spec):
            for policy in aws.iam.list_role_policies(RoleName=name)["PolicyNames"]:
                aws.iam.delete_role_policy(RoleName=name, PolicyName=policy)
            aws.iam.delete_role(RoleName=name)
            deleted.append(f"role {name}")
    return deleted


# -- the security group ------------------------------------------------------------------------
def _vpc_id(aws: Aws, spec: ClusterSpec) -> str:
    ec2 = aws.ec2
    if spec.cloud.subnet_id:
        return str(ec2.describe_subnets(SubnetIds=[spec.cloud.subnet_id])["Subnets"][0]["VpcId"])
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ConfigError(f"{spec.region} has no default VPC; give cloud.subnet_id (a subnet of the VPC to use).")
    return str(vpcs[0]["VpcId"])


def _permissions(plan: Plan, group_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rule in plan.rules:
        permission: dict[str, Any] = {"IpProtocol": rule.protocol}
        if rule.port is not None:
            permission.update(FromPort=rule.port, ToPort=rule.port)
        if rule.source == SELF:
            permission["UserIdGroupPairs"] = [{"GroupId": group_id, "Description": "the cluster's own hosts"}]
        else:
            permission["IpRanges"] = [{"CidrIp": rule.source, "Description": "the deepgrid dashboard"}]
        out.append(permission)
    return out


def ensure_security_group(aws: Aws, plan: Plan) -> str:
    """The group's id: the given one, the one a previous ``up`` made, or a new one; with the plan's rules."""
    import botocore.exceptions as bx

    spec, ec2 = plan.spec, aws.ec2
    with aws_errors("set up the cluster's security group"):
        if plan.create_security_group:
            found = cluster_security_groups(aws, spec)
            if found:
                group_id = str(found[0]["GroupId"])
            else:
                group_id = ec2.create_security_group(
                    GroupName=spec.security_group_name, VpcId=_vpc_id(aws, spec),
                    Description=f"deepgrid cluster {spec.name}: its hosts, and the dashboard from allowed_cidr",
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": spec.tags}])["GroupId"]
        else:
            group_id = plan.security_group
            ec2.describe_security_groups(GroupIds=[group_id])  # one line if it does not exist
        for permission in _permissions(plan, group_id):
            try:
                ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[permission])
            except bx.ClientError as e:
                if error_code(e) != "InvalidPermission.Duplicate":
                    raise
    return group_id


def cluster_security_groups(aws: Aws, spec: ClusterSpec) -> list[dict[str, Any]]:
    filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [spec.name]}]
    return list(aws.ec2.describe_security_groups(Filters=filters)["SecurityGroups"])


def delete_security_groups(aws: Aws, spec: ClusterSpec) -> list[str]:
    """Delete the groups tagged with the cluster (only once its instances are gone)."""
    deleted = []
    with aws_errors("delete the cluster's security group"):
        for group in cluster_security_groups(aws, spec):
            aws.ec2.delete_security_group(GroupId=group["GroupId"])
            deleted.append(str(group["GroupId"]))
    return deleted


def check_exists(aws: Aws, spec: ClusterSpec) -> None:
    """Ask AWS what the spec names: the instance types and the image (one line each if unknown)."""
    types = sorted({spec.cloud.master_instance_type, spec.cloud.worker_instance_type})
    with aws_errors("look up the instance types and the image"):
        aws.ec2.describe_instance_types(InstanceTypes=types)
        if not aws.ec2.describe_images(ImageIds=[spec.cloud.image])["Images"]:
            raise ClusterError(f"cloud.image {spec.cloud.image} is not an image in {spec.region}.")
