"""Schema and consistency checks for the KubeRay manifests in infra/kubernetes."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "kubernetes"
SCHEMA = yaml.safe_load((Path(__file__).parent / "schemas" / "kubernetes.schema.yaml").read_text())


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator({"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{kind}"})


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = _documents()


def _one(kind: str) -> dict:
    found = [d for _, d in DOCS if d["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def test_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name,doc", DOCS, ids=[f"{n}:{d['kind']}:{d.get('metadata', {}).get('name', '')}" for n, d in DOCS])
def test_manifest_matches_schema(name: str, doc: dict) -> None:
    assert doc["kind"] in SCHEMA["$defs"], f"{name}: no schema for kind {doc['kind']}"
    errors = sorted(_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, f"{name}: " + "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_rejects_typos_and_missing_limits() -> None:
    cluster = _one("RayCluster")
    bad = copy.deepcopy(cluster)
    group = bad["spec"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")
    assert list(_validator("RayCluster").iter_errors(bad)), "a misspelt minReplicas must not validate"
    bad = copy.deepcopy(cluster)
    del bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert list(_validator("RayCluster").iter_errors(bad)), "containers without limits must not validate"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _one("Kustomization")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def _groups() -> dict[str, dict]:
    return {g["groupName"]: g for g in _one("RayCluster")["spec"]["workerGroupSpecs"]}


def _container(template: dict) -> dict:
    (container,) = template["spec"]["containers"]
    return container


def test_training_gpu_workers_scale_to_zero() -> None:
    gpu = _groups()["training-gpu"]
    assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0
    limits = _container(gpu["template"])["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert gpu["rayStartParams"]["num-gpus"] == str(limits["nvidia.com/gpu"])
    assert _one("RayCluster")["spec"]["enableInTreeAutoscaling"] is True, "scale-up from zero needs the autoscaler"


def test_curation_workers_are_cpu_only() -> None:
    cpu = _groups()["curation-cpu"]
    resources = _container(cpu["template"])["resources"]
    assert "nvidia.com/gpu" not in resources["limits"] and "nvidia.com/gpu" not in resources["requests"]


def test_worker_groups_advertise_the_resources_the_flows_use() -> None:
    groups = _groups()
    assert '\\"curation\\": 1' in groups["curation-cpu"]["rayStartParams"]["resources"]
    assert '\\"training\\": 1' in groups["training-gpu"]["rayStartParams"]["resources"]
    # Same names as the EC2 launch templates of the Terraform ray-cluster module.
    main_tf = (REPO / "infra" / "terraform" / "modules" / "ray-cluster" / "main.tf").read_text()
    assert "jsonencode({ curation = 1 })" in main_tf and "jsonencode({ training = 1 })" in main_tf


def test_workers_use_their_own_s3_service_accounts() -> None:
    accounts = {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == "ServiceAccount"}
    groups = _groups()
    expected = {"curation-cpu": "reelflow-curation", "training-gpu": "reelflow-training"}
    for group, account in expected.items():
        assert groups[group]["template"]["spec"]["serviceAccountName"] == account
        sa = accounts[account]
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
        assert sa["automountServiceAccountToken"] is False
    head = _one("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    assert head.get("serviceAccountName") not in expected.values(), "the head gets no S3 role"


def test_head_is_not_exposed() -> None:
    cluster = _one("RayCluster")["spec"]
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    policy = _one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"ray.io/cluster": _one("RayCluster")["metadata"]["name"]}
    client_rule = [r for r in policy["ingress"] if "ports" in r]
    assert client_rule and {p["port"] for p in client_rule[0]["ports"]} == {10001, 8265}
    assert all("ipBlock" not in f for r in policy["ingress"] for f in r["from"])


def test_everything_runs_in_the_reelflow_namespace() -> None:
    namespace = _one("Namespace")["metadata"]["name"]
    for name, doc in DOCS:
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"]["namespace"] == namespace, name


def test_rayjob_targets_the_cluster() -> None:
    job = _one("RayJob")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": _one("RayCluster")["metadata"]["name"]}
    assert job["entrypoint"].startswith("reelflow curate s3://")
    submitter = job["submitterPodTemplate"]
    assert submitter["metadata"]["labels"]["reelflow.io/ray-client"] == "true"
