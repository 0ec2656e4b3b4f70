"""``deepgrid cluster ...`` against moto in server mode on loopback: nothing leaves the machine.

Every command runs through ``deepgrid.cli.main`` with fake keys, ``AWS_ENDPOINT_URL`` pointing at
the moto server and a fresh HOME (no profile of the user's). What ``up`` leaves in moto is compared
with what ``plan`` said: the tagged instances, the security group's rules and the start-up scripts.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepgrid.cli import main
from deepgrid.cloud.spec import TAG_CLUSTER, TAG_ROLE
from deepgrid.config.conf import Conf
from tests.helpers import assert_user_error
from tests.integration.moto_server import REGION, MotoServer, moto_server  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "aws.yaml"
DOCS = ROOT / "docs" / "aws.md"


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:  # noqa: F811
    """The moto server, emptied, with this process's AWS settings pointing only at it."""
    moto_server.reset()
    moto_server.patch_env(monkeypatch, tmp_path / "home")
    monkeypatch.chdir(tmp_path)
    return moto_server


_IMAGES: dict[str, str] = {}


def moto_image(server: MotoServer) -> str:
    """An AMI moto knows (it ships a list; it has no Debian one, and the scripts are not run here).
    Looked up once per server: moto takes a second or two to filter its list."""
    if server.url not in _IMAGES:
        _IMAGES[server.url] = _first_ubuntu_image(server)
    return _IMAGES[server.url]


def _first_ubuntu_image(server: MotoServer) -> str:
    images = server.client("ec2").describe_images(Filters=[{"Name": "name", "Values": ["ubuntu*"]}])["Images"]
    return str(images[0]["ImageId"])


def write_conf(server: MotoServer, directory: Path, name: str = "aws.yaml", **cloud: Any) -> Path:
    """examples/aws.yaml with moto's region and an AMI moto has, and ``cloud`` changes. The dashboard
    stays closed unless ``allowed_cidr`` is given: `status` would otherwise try moto's made-up
    public address, and nothing may leave the machine."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["cloud"].update({"region": REGION, "image": moto_image(server), "allowed_cidr": None, **cloud})
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def instances(server: MotoServer, cluster: str | None = None, live: bool = True) -> list[dict[str, Any]]:
    filters = [{"Name": "instance-state-name", "Values": ["pending", "running"]}] if live else []
    if cluster:
        filters.append({"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]})
    reservations = server.client("ec2").describe_instances(Filters=filters)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def tag(instance: dict[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), None)


def user_data(server: MotoServer, instance_id: str) -> str:
    value = server.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(value["UserData"]["Value"]).decode()


def everything(server: MotoServer) -> dict[str, Any]:
    """What the account holds: instances, security groups, parameters, roles, instance profiles."""
    return {"instances": sorted(i["InstanceId"] for i in instances(server, live=False)),
            "groups": sorted(g["GroupId"] for g in server.client("ec2").describe_security_groups()["SecurityGroups"]),
            "parameters": sorted(p["Name"] for p in server.client("ssm").describe_parameters()["Parameters"]),
            "roles": sorted(r["RoleName"] for r in server.client("iam").list_roles()["Roles"]),
            "profiles": sorted(p["InstanceProfileName"]
                               for p in server.client("iam").list_instance_profiles()["InstanceProfiles"])}


def test_the_example_loads_and_plans() -> None:
    conf = Conf.load(EXAMPLE)
    assert conf.cloud is not None and conf.cloud["workers"] == 2
    from deepgrid.cloud.plan import build_plan, format_plan
    from deepgrid.cloud.spec import cluster_spec

    plan = build_plan(cluster_spec(conf))
    text = format_plan(plan)
    assert "deepgrid worker --registry zk://MASTER_PRIVATE_IP:2181/deepgrid --job fmnist-aws" in text
    assert "Cost: $" in text and "/h on demand" in text
    for script in (plan.master_script, plan.worker_script):  # both parse as bash
        checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr


def test_plan_creates_nothing(aws: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(aws, tmp_path, allowed_cidr="203.0.113.7/32")
    before = everything(aws)
    code, out, err = run(capsys, "cluster", "plan", str(conf))
    assert code == 0, err
    assert everything(aws) == before
    assert "1 x master m5.large (on-demand)" in out and "2 x worker c5.xlarge (on-demand)" in out
    assert "tcp port 8265 from 203.0.113.7/32" in out
    # The table lists m5.large and c5.xlarge in us-east-1: 0.096 + 2 * 0.17.
    assert "Cost: $0.436/h on demand" in out
    summary = run_json(capsys, "cluster", "plan", str(write_conf(aws, tmp_path, worker_instance_type="x9.mega")))
    assert summary["price_unknown"] == ["x9.mega"]


def test_up_creates_exactly_the_plan(aws: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(aws, tmp_path, workers=3, spot=True, allowed_cidr="203.0.113.7/32")
    plan = run_json(capsys, "cluster", "plan", str(conf))
    result = run_json(capsys, "cluster", "up", str(conf))
    found = instances(aws, "fmnist-aws")
    planned = {(g["role"], g["type"], g["market"]): g["count"] for g in plan["instances"]}
    made: dict[tuple[str, str, str], int] = {}
    for i in found:
        key = (tag(i, TAG_ROLE), i["InstanceType"], i.get("InstanceLifecycle", "on-demand"))
        made[key] = made.get(key, 0) + 1  # type: ignore[index]
    assert made == planned == {("master", "m5.large", "on-demand"): 1, ("worker", "c5.xlarge", "spot"): 3}
    assert len(instances(aws)) == 4  # nothing untagged
    associations = aws.client("ec2").describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
    profiles = {a["InstanceId"]: a["IamInstanceProfile"]["Arn"] for a in associations}
    # moto records the profile of a run_instances call's first instance only: one per reservation.
    assert len(profiles) == 2 and result["master"] in profiles and result["workers"][0] in profiles
    assert all(arn.endswith(f"instance-profile/{plan['role']}") for arn in profiles.values())
    for i in found:
        assert [g["GroupId"] for g in i["SecurityGroups"]] == [result["security_group"]]

    # The security group: the cluster itself, and the dashboard port from allowed_cidr only.
    group = aws.client("ec2").describe_security_groups(GroupIds=[result["security_group"]])["SecurityGroups"][0]
    assert {"Key": TAG_CLUSTER, "Value": "fmnist-aws"} in group["Tags"]
    rules = {(p["IpProtocol"], p.get("FromPort"), tuple(g["GroupId"] for g in p["UserIdGroupPairs"]),
              tuple(r["CidrIp"] for r in p["IpRanges"])) for p in group["IpPermissions"]}
    assert rules == {("-1", None, (group["GroupId"],), ()), ("tcp", 8265, (), ("203.0.113.7/32",))}
    assert plan["ingress"] == ["all traffic from the group itself", "tcp port 8265 from 203.0.113.7/32"]

    # The start-up scripts: the master's services and command, the workers' command with its address.
    master = next(i for i in found if tag(i, TAG_ROLE) == "master")
    script = user_data(aws, master["InstanceId"])
    assert "apt-get install -y -q python3-venv redis-server zookeeperd dataset-fashion-mnist" in script
    assert "systemctl enable --now redis-server zookeeper" in script
    assert re.search(r"deepgrid master /etc/deepgrid/conf.yaml --bind \"\$IP\" --min-workers 3 "
                     r"--state redis://127\.0\.0\.1:6379/0 --registry zk://127\.0\.0\.1:2181/deepgrid "
                     r"--dashboard 0\.0\.0\.0:8265", script)
    conf_text = script.split("<<'DEEPGRID_CONF'\n")[1].split("DEEPGRID_CONF")[0]
    assert Conf.from_dict(yaml.safe_load(conf_text)) == Conf.load(conf)
    expected = (f"/opt/deepgrid/bin/deepgrid worker --registry zk://{master['PrivateIpAddress']}:2181/deepgrid "
                "--job fmnist-aws -a mlp --token-file /root/.ray/auth_token")
    for worker in (i for i in found if tag(i, TAG_ROLE) == "worker"):
        assert expected in user_data(aws, worker["InstanceId"])
    assert result["master_private_ip"] == master["PrivateIpAddress"]

    # The token: a SecureString of the cluster's, which only its role may read.
    ssm = aws.client("ssm")
    token = ssm.get_parameter(Name=plan["token_parameter"], WithDecryption=True)["Parameter"]
    assert token["Type"] == "SecureString" and len(token["Value"]) >= 40
    assert f'Name="{plan["token_parameter"]}"' in script and token["Value"] not in script
    policy = aws.client("iam").get_role_policy(RoleName=plan["role"], PolicyName="read-ray-token")["PolicyDocument"]
    statement = (policy if isinstance(policy, dict) else json.loads(policy))["Statement"]
    assert statement == [{"Effect": "Allow", "Action": "ssm:GetParameter",
                          "Resource": f"arn:aws:ssm:{REGION}:*:parameter{plan['token_parameter']}"}]

    # A second `up` of a running cluster is one line, and creates nothing.
    before = everything(aws)
    code, _, err = run(capsys, "cluster", "up", str(conf))
    assert_user_error(code, err, "already up")
    assert everything(aws) == before


def test_down_removes_only_its_own(aws: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ec2 = aws.client("ec2")
    untagged = ec2.run_instances(ImageId=moto_image(aws), MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ours, other = write_conf(aws, tmp_path), write_conf(aws, tmp_path, "other.yaml", cluster_name="other")
    run_json(capsys, "cluster", "up", str(ours))
    other_up = run_json(capsys, "cluster", "up", str(other))
    before = everything(aws)

    result = run_json(capsys, "cluster", "down", str(ours))
    assert len(result["terminated"]) == 3
    assert instances(aws, "fmnist-aws") == []
    assert {i["InstanceId"] for i in instances(aws)} == {untagged, other_up["master"], *other_up["workers"]}
    after = everything(aws)
    assert after["groups"] == [g for g in before["groups"] if g not in result["security_groups"]]
    assert other_up["security_group"] in after["groups"]
    assert after["parameters"] == ["/deepgrid/other/ray-token"]
    assert after["roles"] == after["profiles"] == [f"deepgrid-other-{REGION}"]
    # Nothing left of ours: a second `down` finds nothing to do.
    assert run_json(capsys, "cluster", "down", str(ours))["terminated"] == []


def test_status_lists_the_cluster(aws: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(aws, tmp_path)
    up = run_json(capsys, "cluster", "up", str(conf))
    found = run_json(capsys, "cluster", "status", str(conf))
    assert sorted(i["id"] for i in found["instances"]) == sorted([up["master"], *up["workers"]])
    assert {i["role"] for i in found["instances"]} == {"master", "worker"}
    assert found["security_groups"] == [up["security_group"]]
    # No allowed_cidr: the dashboard is closed, and status says so instead of trying it.
    assert found["progress"]["state"] == "unreachable" and "closed" in found["progress"]["why"]
    code, out, err = run(capsys, "cluster", "status", str(conf))
    assert code == 0, err
    assert f"{up['master']}  master" in out and "progress: unreachable" in out


def test_add_and_remove_workers(aws: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(aws, tmp_path)
    up = run_json(capsys, "cluster", "up", str(conf))
    added = run_json(capsys, "cluster", "add-workers", str(conf), "2")
    assert added["workers"] == 4
    workers = [i for i in instances(aws, "fmnist-aws") if tag(i, TAG_ROLE) == "worker"]
    assert len(workers) == 4
    for worker in workers:  # the same script: they join the running job through the registry
        assert user_data(aws, worker["InstanceId"]) == user_data(aws, up["workers"][0])
    removed = run_json(capsys, "cluster", "remove-workers", str(conf), "3")
    assert removed["workers"] == 1
    left = [i["InstanceId"] for i in instances(aws, "fmnist-aws") if tag(i, TAG_ROLE) == "worker"]
    assert len(left) == 1 and set(removed["removed"]).isdisjoint(left)
    assert up["master"] in [i["InstanceId"] for i in instances(aws, "fmnist-aws")]
    code, _, err = run(capsys, "cluster", "remove-workers", str(conf), "2")
    assert_user_error(code, err, "has 1 running workers")


def test_mistakes_are_one_line(aws: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write_conf(aws, tmp_path)
    with aws.require_auth():  # moto now checks keys, as AWS does: "testing" is no key it knows
        code, _, err = run(capsys, "cluster", "up", str(conf))
    assert_user_error(code, err, "AWS refused the credentials", "AWS_PROFILE")
    code, _, err = run(capsys, "cluster", "status", str(write_conf(aws, tmp_path, region="eu-wset-1")))
    assert_user_error(code, err, "cloud.region", "Did you mean 'eu-west-1'?")
    code, _, err = run(capsys, "cluster", "up", str(write_conf(aws, tmp_path, worker_instance_type="m5.lrage")))
    assert_user_error(code, err, "Unknown instance type", "m5.lrage")
    code, _, err = run(capsys, "cluster", "up", str(write_conf(aws, tmp_path, image="ami-00000000")))
    assert_user_error(code, err, "cloud.image")
    code, _, err = run(capsys, "cluster", "plan", str(EXAMPLE.with_name("mlp.yaml")))
    assert_user_error(code, err, "no `cloud:` section")
    assert instances(aws, live=False) == []  # none of them started anything
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    code, _, err = run(capsys, "cluster", "down", str(conf))
    assert_user_error(code, err, "No AWS credentials found")


def test_a_failed_up_says_how_to_clean_up(aws: MotoServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A subnet that does not exist fails `up` after the token and the role were made."""
    conf = write_conf(aws, tmp_path, subnet_id="subnet-0123abcd")
    code, _, err = run(capsys, "cluster", "up", str(conf))
    assert_user_error(code, err, "subnet-0123abcd", "deepgrid cluster down CONF")
    assert everything(aws)["parameters"] == ["/deepgrid/fmnist-aws/ray-token"]
    assert run_json(capsys, "cluster", "down", str(conf))["parameters"] == ["/deepgrid/fmnist-aws/ray-token"]
    after = everything(aws)
    assert after["parameters"] == after["roles"] == after["profiles"] == []
    assert all(g["GroupName"] != "deepgrid-fmnist-aws"
               for g in aws.client("ec2").describe_security_groups()["SecurityGroups"])


def test_a_bad_cloud_section_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    for change, fragment in (({"imge": "ami-0123abcd"}, "Did you mean `image`?"),
                             ({"workers": 0}, "cloud.workers"), ({"allowed_cidr": "me"}, "cloud.allowed_cidr"),
                             ({"cluster_name": "a b"}, "cloud.cluster_name")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**data, "cloud": {**data["cloud"], **change}}))
        code, _, err = run(capsys, "cluster", "plan", str(path))
        assert_user_error(code, err, fragment)


def test_the_docs_steps_give_what_the_tests_assert(aws: MotoServer, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """docs/aws.md's `deepgrid cluster` steps, in order, on the example (moto's AMI and region)."""
    conf = write_conf(aws, tmp_path)
    steps = [line.split("#")[0].split() for line in DOCS.read_text().splitlines() if line.startswith("deepgrid cluster ")]
    assert [s[2] for s in steps] == ["plan", "up", "status", "add-workers", "remove-workers", "down"]
    counts = {}
    for step in steps:
        argv = [str(conf) if word == "examples/aws.yaml" else word for word in step[1:]]
        code, _, err = run(capsys, *argv)
        assert code == 0, err
        counts[step[2]] = len(instances(aws, "fmnist-aws"))
    assert counts == {"plan": 0, "up": 3, "status": 3, "add-workers": 5, "remove-workers": 3, "down": 0}
    assert everything(aws)["parameters"] == [] and everything(aws)["roles"] == []


class FakeDashboard(BaseHTTPRequestHandler):
    """The master's /api/run, behind its token (as deepgrid.dashboard serves it)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.headers.get("Authorization") != "Bearer the-token":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"status": "training", "round": 7}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_status_reads_the_progress_from_the_masters_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress half of status, against a dashboard on loopback standing in for the master's."""
    from deepgrid.cloud.operations import DASHBOARD_TOKEN_ENV, progress
    from deepgrid.cloud.spec import cluster_spec

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conf = Conf.load(EXAMPLE)
        cloud = {**(conf.cloud or {}), "dashboard_port": server.server_address[1]}
        spec = cluster_spec(conf.replace(cloud=cloud))
        master = {"id": "i-0123", "public_ip": "127.0.0.1"}
        monkeypatch.delenv(DASHBOARD_TOKEN_ENV, raising=False)
        without = progress(spec, master)
        assert without["state"] == "unreachable" and DASHBOARD_TOKEN_ENV in without["why"]
        monkeypatch.setenv(DASHBOARD_TOKEN_ENV, "the-token")
        assert progress(spec, master)["run"] == {"status": "training", "round": 7}
    finally:
        server.shutdown()
        server.server_close()
    assert progress(spec, master)["state"] == "unreachable"  # nothing answers there now
