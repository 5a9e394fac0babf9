"""reelflow's own checkov policies for the KubeRay manifests in infra/kubernetes.

checkov's built-in Kubernetes checks only know core kinds (Pod, Deployment, ...), so these
checks look inside RayCluster and RayJob pod templates.
"""

from __future__ import annotations

from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.kubernetes.checks.resource.base_spec_check import BaseK8Check


def _templates(conf: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, pod template) pairs of a RayCluster or RayJob."""
    spec = conf.get("spec") or {}
    out: list[tuple[str, dict[str, Any]]] = []
    cluster = spec.get("rayClusterSpec") if conf.get("kind") == "RayJob" else spec
    if isinstance(cluster, dict):
        head = (cluster.get("headGroupSpec") or {}).get("template")
        if isinstance(head, dict):
            out.append(("head", head))
        for group in cluster.get("workerGroupSpecs") or []:
            if isinstance(group, dict) and isinstance(group.get("template"), dict):
                out.append((str(group.get("groupName")), group["template"]))
    if conf.get("kind") == "RayJob" and isinstance(spec.get("submitterPodTemplate"), dict):
        out.append(("submitter", spec["submitterPodTemplate"]))
    return out


def _gpu_requested(group: dict[str, Any]) -> bool:
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
    for c in containers:
        res = (c or {}).get("resources") or {}
        for kind in ("limits", "requests"):
            if "nvidia.com/gpu" in (res.get(kind) or {}):
                return True
    return False


class RayGpuGroupsScaleToZero(BaseK8Check):
    def __init__(self) -> None:
        super().__init__(
            name="RayCluster GPU worker groups scale to zero (minReplicas 0)",
            id="REELFLOW_K8S_1",
            categories=(CheckCategories.GENERAL_SECURITY,),
            supported_entities=("RayCluster",),
        )

    def scan_spec_conf(self, conf: dict[str, Any]) -> CheckResult:
        groups = [g for g in (conf.get("spec") or {}).get("workerGroupSpecs") or [] if isinstance(g, dict)]
        gpu_groups = [g for g in groups if _gpu_requested(g)]
        if not gpu_groups:
            return CheckResult.UNKNOWN
        return CheckResult.PASSED if all(g.get("minReplicas") == 0 for g in gpu_groups) else CheckResult.FAILED


class RayPodsHardened(BaseK8Check):
    def __init__(self) -> None:
        super().__init__(
            name="Ray pod containers run as non-root, without privilege escalation, with all capabilities dropped, a read-only root filesystem and resource limits",
            id="REELFLOW_K8S_2",
            categories=(CheckCategories.KUBERNETES,),
            supported_entities=("RayCluster", "RayJob"),
        )

    def scan_spec_conf(self, conf: dict[str, Any]) -> CheckResult:
        templates = _templates(conf)
        if not templates:
            return CheckResult.UNKNOWN
        for _, template in templates:
            pod = template.get("spec") or {}
            pod_sc = pod.get("securityContext") or {}
            for c in pod.get("containers") or []:
                sc = (c or {}).get("securityContext") or {}
                non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
                caps = [str(x).upper() for x in ((sc.get("capabilities") or {}).get("drop") or [])]
                limits = ((c or {}).get("resources") or {}).get("limits") or {}
                if not (
                    non_root
                    and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("privileged") is not True
                    and sc.get("readOnlyRootFilesystem") is True
                    and "ALL" in caps
                    and "cpu" in limits
                    and "memory" in limits
                ):
                    return CheckResult.FAILED
        return CheckResult.PASSED


check_gpu_zero = RayGpuGroupsScaleToZero()
check_hardened = RayPodsHardened()
