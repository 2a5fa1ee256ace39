"""deploy/: every manifest parses and holds what KubeRay and Ray's cluster launcher require."""

import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
REPO = DEPLOY.parent
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))


def documents(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kuberay_documents():
    return [(path, doc) for path in sorted((DEPLOY / "kuberay").glob("*.yaml")) for doc in documents(path)]


def pod_specs(doc):
    """(where, pod spec) of every Ray pod template of a RayCluster or RayJob."""
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert "headGroupSpec" in spec and "workerGroupSpecs" in spec, "a cluster spec needs a head and worker groups"
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    out = []
    for name, group in groups:
        assert "rayStartParams" in group, f"{name}: KubeRay requires rayStartParams (may be empty)"
        out.append((name, group["template"]["spec"]))
    return out


def test_there_are_manifests_and_every_one_parses():
    names = {p.relative_to(DEPLOY).as_posix() for p in MANIFESTS}
    assert {"cluster.yaml", "runtime_env.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"} <= names
    for path in MANIFESTS:
        assert documents(path), f"{path} is empty"


@pytest.mark.parametrize("path_doc", kuberay_documents(), ids=lambda pd: f"{pd[0].name}:{pd[1]['kind']}")
def test_kuberay_objects_have_the_fields_the_operator_requires(path_doc):
    path, doc = path_doc
    assert doc["apiVersion"] in ("ray.io/v1", "v1") and doc["metadata"]["name"]
    if doc["kind"] == "PersistentVolumeClaim":
        assert doc["spec"]["accessModes"] and doc["spec"]["resources"]["requests"]["storage"]
        return
    assert doc["kind"] in ("RayCluster", "RayJob")
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].strip()
    claims_here = {d["metadata"]["name"] for d in documents(path) if d["kind"] == "PersistentVolumeClaim"}
    for group, pod in pod_specs(doc):
        containers = pod["containers"]
        assert containers and all(c["image"] and c["name"] for c in containers), group
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in containers:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{group}: mount {mount['name']} has no volume"
        for volume in volumes.values():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                # The claim is defined where it is used, so applying this one file is enough.
                assert claim in claims_here, f"{path.name}: claim {claim} is not defined in this file"
                # The Ray image runs as uid 1000, gid 100: without fsGroup the volume is root's.
                assert (pod.get("securityContext") or {}).get("fsGroup") == 100, f"{group}: fsGroup"


def test_the_job_and_the_long_lived_cluster_do_not_share_a_read_write_once_claim():
    claims = {}
    for path, doc in kuberay_documents():
        if doc["kind"] == "PersistentVolumeClaim":
            assert doc["metadata"]["name"] not in claims, "two files define the same claim"
            claims[doc["metadata"]["name"]] = path.name
    assert len(claims) == 2


def test_cluster_launcher_config_has_the_required_fields_and_bootstraps_pip():
    (config,) = documents(DEPLOY / "cluster.yaml")
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type"):
        assert key in config, key
    assert config["provider"]["type"]
    assert config["head_node_type"] in config["available_node_types"]
    for name, node_type in config["available_node_types"].items():
        assert "node_config" in node_type and "resources" in node_type, name
    setup = config["setup_commands"]
    first_pip_install = next(i for i, c in enumerate(setup) if "pip install" in c and "apt-get" not in c)
    assert any("python3-pip" in c or "get-pip" in c for c in setup[:first_pip_install]), "pip is never installed"
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address" in c for c in config["worker_start_ray_commands"])


def test_torch_is_pinned_to_the_makefiles_version_everywhere():
    pinned = re.search(r"^TORCH := (torch==\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert f"TORCH={pinned}" in (DEPLOY / "Dockerfile").read_text()
    assert f'"{pinned}"' in (DEPLOY / "cluster.yaml").read_text()
