"""cluster.yaml (AWS) and cluster-local.yaml (machines you own) pass Ray's own cluster-config
validation offline, break it when broken, open no port to the outside but SSH, keep the head free
of trials, and install the Ray version the project pins."""
import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster-local.yaml"]


def load(name: str) -> dict:
    with open(REPO / name) as f:
        return yaml.safe_load(f)


def ray_checks(config: dict) -> dict:
    """What `ray up` does to a config before touching any cloud: fill in the provider's defaults
    and validate against ray/autoscaler/ray-schema.json (no credentials, no network)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def start_commands(config: dict) -> list[str]:
    return [*config.get("head_start_ray_commands", []), *config.get("worker_start_ray_commands", [])]


@pytest.mark.parametrize("name", CONFIGS)
def test_cluster_config_passes_rays_validation(name):
    prepared = ray_checks(load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _fractional_head_cpu(c):
    c["available_node_types"]["head"]["resources"]["CPU"] = 0.5  # schema: integers only


def _misspelt_node_type_key(c):
    c["available_node_types"]["gpu_worker"]["min_worker"] = 1


def _head_type_missing(c):
    c["head_node_type"] = "ray.head.default"


def _extra_security_group_field(c):
    c["provider"]["security_group"]["Ingress"] = [{"FromPort": 8265}]


def _worker_ips_not_a_list(c):
    c["provider"]["worker_ips"] = "192.168.1.11"


def _unknown_top_level_key(c):
    c["setup_comands"] = ["pip install ray"]


BROKEN = {
    "cluster.yaml": [_fractional_head_cpu, _misspelt_node_type_key, _head_type_missing,
                     _extra_security_group_field, _unknown_top_level_key],
    "cluster-local.yaml": [_worker_ips_not_a_list, _unknown_top_level_key],
}


@pytest.mark.parametrize("name, breakage", [(n, b) for n, bs in BROKEN.items() for b in bs],
                         ids=lambda v: v.__name__.strip("_") if callable(v) else v)
def test_a_broken_copy_fails_rays_validation(name, breakage):
    config = load(name)
    ray_checks(config)  # the original passes ...
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_checks(config)  # ... the broken copy does not


def _is_ssh(rule: dict) -> bool:
    return rule.get("IpProtocol") == "tcp" and rule.get("FromPort") == 22 and rule.get("ToPort") == 22


def test_aws_security_group_adds_nothing_but_ssh():
    config = load("cluster.yaml")
    group = config["provider"]["security_group"]
    extra = [r for r in group["IpPermissions"] if not _is_ssh(r)]
    assert not extra, f"cluster.yaml opens more than SSH: {extra}"
    for name, node_type in config["available_node_types"].items():
        assert "SecurityGroupIds" not in node_type["node_config"], \
            f"{name} names its own security groups, bypassing the checked one"


def test_aws_inbound_rules_ray_creates_admit_only_ssh_from_outside():
    """The exact inbound rules `ray up` authorizes on the cluster's group, computed by Ray's own
    code from cluster.yaml: only tcp 22 comes from outside the group; everything else is traffic
    between the cluster's nodes. No rule is given twice (AWS would reject the whole call)."""
    pytest.importorskip("boto3")  # Ray's AWS module imports it
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    own_group = "sg-n2n-search"
    extended = load("cluster.yaml")["provider"]["security_group"]["IpPermissions"]
    rules = _create_default_inbound_rules({own_group}, extended_rules=extended)
    from_outside = [r for r in rules
                    if r.get("IpRanges") or r.get("Ipv6Ranges") or r.get("PrefixListIds")
                    or any(p.get("GroupId") != own_group for p in r.get("UserIdGroupPairs", []))]
    assert from_outside and all(_is_ssh(r) for r in from_outside), from_outside
    inside = [r for r in rules if r not in from_outside]
    assert all(p["GroupId"] == own_group for r in inside for p in r["UserIdGroupPairs"])
    canonical = [repr(sorted(r.items())) for r in rules]
    assert len(canonical) == len(set(canonical)), f"a rule is given twice: {rules}"


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_listens_on_loopback_only(name):
    config = load(name)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for command in start_commands(config):
        assert "0.0.0.0" not in command, command
        assert "--ray-client-server-port" not in command, command


def test_head_runs_no_trials():
    aws = load("cluster.yaml")
    assert aws["available_node_types"][aws["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [t for t in aws["available_node_types"].values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t.get("min_workers", 0) == 0 and t["max_workers"] >= 1 for t in gpu_types)
    local_head = " ".join(load("cluster-local.yaml")["head_start_ray_commands"])
    assert "--num-cpus=0" in local_head


@pytest.mark.parametrize("name", CONFIGS)
def test_setup_installs_the_project_with_the_pinned_ray(name):
    config = load(name)
    pyproject = (REPO / "pyproject.toml").read_text()
    pinned = re.search(r'"ray\[[a-z,]+\](==[0-9.*]+)"', pyproject).group(1)
    assert ray.__version__.startswith(pinned.strip("=*").rstrip(".")), (pinned, ray.__version__)
    setup = config["setup_commands"]
    words = [w for command in setup for w in shlex.split(command)]
    cluster_extra = re.search(r"^cluster = \[(.*)\]", pyproject, re.M).group(1)
    assert (f"ray[default]{pinned}" in words
            or "~/n2n-search[cluster]" in words and f'"ray[default]{pinned}"' in cluster_extra), setup
    # every node installs the torch that CI tests (the version of .ci/run's `pip install torch==...`)
    tested = re.search(r"pip install -q torch==([0-9.]+)", (REPO / ".ci" / "run").read_text()).group(1)
    torches = [w.rstrip(";&|") for w in words if re.fullmatch(r"torch([=<>!~].*)?", w)]
    assert torches and all(w == f"torch=={tested}" for w in torches), torches
    assert config["file_mounts"].get("~/n2n-search") == "."
    assert any(re.search(r"pip install -e ~/n2n-search\b", c) for c in setup), setup
    # token auth on every node, with the token of the machine that runs `ray up`
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert all("RAY_AUTH_MODE=token" in c for c in start_commands(config) if "ray start" in c)
