"""reelflow's own checkov policies for infra/terraform.

Loaded with `checkov --external-checks-dir infra/checkov`. They encode the project's rules
(least-privilege IAM, encrypted private storage, IMDSv2, no public Ray ports, GPU scale to
zero) so that a regression fails `make test` even where checkov's built-in checks are silent.
"""

from __future__ import annotations

import json
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.data.base_check import BaseDataCheck
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

# Actions that AWS does not allow to scope to a resource ARN ("*" is the only valid Resource).
# Every entry needs a reason; keep this list short.
UNSCOPABLE_ACTIONS = {
    # Prefect's ECS worker resolves the flow-run task definition; the API has no resource type.
    "ecs:DescribeTaskDefinition",
}


def _first(value: Any) -> Any:
    """checkov wraps HCL attribute values in one-element lists."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def _as_list(value: Any) -> list[Any]:
    value = _first(value)
    if value is None:
        return []
    if isinstance(value, list):
        out: list[Any] = []
        for v in value:
            out.extend(v if isinstance(v, list) else [v])
        return out
    return [value]


def _statements(conf: dict[str, Any]) -> list[dict[str, Any]]:
    """Allow statements of a data.aws_iam_policy_document, normalised to lower-case keys."""
    out = []
    for stmt in conf.get("statement", []) or []:
        for s in stmt if isinstance(stmt, list) else [stmt]:
            if not isinstance(s, dict):
                continue
            effect = _first(s.get("effect", ["Allow"])) or "Allow"
            if effect != "Allow":
                continue
            out.append(
                {
                    "actions": [str(a) for a in _as_list(s.get("actions"))],
                    "not_actions": _as_list(s.get("not_actions")),
                    "resources": [str(r) for r in _as_list(s.get("resources"))],
                    "not_resources": _as_list(s.get("not_resources")),
                }
            )
    return out


def _json_policy_statements(policy: Any) -> list[dict[str, Any]] | None:
    """Allow statements of a JSON policy attribute (aws_iam_*_policy), or None if unparsable."""
    policy = _first(policy)
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError:
            return None  # a reference to a policy document; that document is checked itself
    if not isinstance(policy, dict):
        return None
    stmts = policy.get("Statement", [])
    out = []
    for s in stmts if isinstance(stmts, list) else [stmts]:
        if not isinstance(s, dict) or s.get("Effect", "Allow") != "Allow":
            continue
        out.append(
            {
                "actions": [str(a) for a in _as_list(s.get("Action"))],
                "not_actions": _as_list(s.get("NotAction")),
                "resources": [str(r) for r in _as_list(s.get("Resource"))],
                "not_resources": _as_list(s.get("NotResource")),
            }
        )
    return out


IAM_POLICY_RESOURCES = ("aws_iam_policy", "aws_iam_role_policy", "aws_iam_user_policy", "aws_iam_group_policy")


def _no_wildcard_actions(statements: list[dict[str, Any]]) -> CheckResult:
    for s in statements:
        if s["not_actions"] or s["not_resources"]:
            return CheckResult.FAILED  # NotAction/NotResource grant everything else
        if any("*" in a for a in s["actions"]):
            return CheckResult.FAILED
    return CheckResult.PASSED


def _scoped_resources(statements: list[dict[str, Any]]) -> CheckResult:
    for s in statements:
        if "*" in s["resources"] and not set(s["actions"]) <= UNSCOPABLE_ACTIONS:
            return CheckResult.FAILED
        if "iam:PassRole" in s["actions"]:
            for r in s["resources"]:
                # A named role: a reference to a role resource or a literal role ARN without wildcards.
                if "*" in r or not (":role/" in r or r.startswith("aws_iam_role.") or ".arn" in r or "_arn" in r):
                    return CheckResult.FAILED
    return CheckResult.PASSED


class PolicyDocumentNamesActions(BaseDataCheck):
    def __init__(self) -> None:
        super().__init__(
            name="IAM policy documents name every action: no wildcards, no NotAction/NotResource",
            id="REELFLOW_AWS_1",
            categories=(CheckCategories.IAM,),
            supported_data=("aws_iam_policy_document",),
        )

    def scan_data_conf(self, conf: dict[str, list[Any]]) -> CheckResult:
        return _no_wildcard_actions(_statements(conf))


class InlinePolicyNamesActions(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="IAM policies name every action: no wildcards, no NotAction/NotResource",
            id="REELFLOW_AWS_1",
            categories=(CheckCategories.IAM,),
            supported_resources=IAM_POLICY_RESOURCES,
        )

    def scan_resource_conf(self, conf: dict[str, list[Any]]) -> CheckResult:
        stmts = _json_policy_statements(conf.get("policy"))
        return CheckResult.PASSED if stmts is None else _no_wildcard_actions(stmts)


class PolicyDocumentScopesResources(BaseDataCheck):
    def __init__(self) -> None:
        super().__init__(
            name='IAM policy documents scope resources: "*" only for actions without resource-level permissions; iam:PassRole only on named roles',
            id="REELFLOW_AWS_3",
            categories=(CheckCategories.IAM,),
            supported_data=("aws_iam_policy_document",),
        )

    def scan_data_conf(self, conf: dict[str, list[Any]]) -> CheckResult:
        return _scoped_resources(_statements(conf))


class InlinePolicyScopesResources(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name='IAM policies scope resources: "*" only for actions without resource-level permissions; iam:PassRole only on named roles',
            id="REELFLOW_AWS_3",
            categories=(CheckCategories.IAM,),
            supported_resources=IAM_POLICY_RESOURCES,
        )

    def scan_resource_conf(self, conf: dict[str, list[Any]]) -> CheckResult:
        stmts = _json_policy_statements(conf.get("policy"))
        return CheckResult.PASSED if stmts is None else _scoped_resources(stmts)


class BucketEncryptedWithKms(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="S3 default encryption is SSE-KMS with a customer-managed key",
            id="REELFLOW_AWS_2",
            categories=(CheckCategories.ENCRYPTION,),
            supported_resources=("aws_s3_bucket_server_side_encryption_configuration",),
        )

    def scan_resource_conf(self, conf: dict[str, list[Any]]) -> CheckResult:
        rules = _as_list(conf.get("rule"))
        if not rules:
            return CheckResult.FAILED
        for rule in rules:
            default = _first(_first(rule).get("apply_server_side_encryption_by_default") if isinstance(_first(rule), dict) else None)
            if not isinstance(default, dict):
                return CheckResult.FAILED
            if _first(default.get("sse_algorithm")) not in ("aws:kms", "aws:kms:dsse"):
                return CheckResult.FAILED
            if not _first(default.get("kms_master_key_id")):
                return CheckResult.FAILED
        return CheckResult.PASSED


class Imdsv2HopLimitOne(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="EC2 instances and launch templates require IMDSv2 tokens with a hop limit of 1",
            id="REELFLOW_AWS_4",
            categories=(CheckCategories.GENERAL_SECURITY,),
            supported_resources=("aws_launch_template", "aws_instance"),
        )

    def scan_resource_conf(self, conf: dict[str, list[Any]]) -> CheckResult:
        opts = _first(conf.get("metadata_options"))
        if not isinstance(opts, dict):
            return CheckResult.FAILED
        if _first(opts.get("http_tokens")) != "required":
            return CheckResult.FAILED
        if _first(opts.get("http_put_response_hop_limit")) not in (1, "1"):
            return CheckResult.FAILED
        return CheckResult.PASSED


OPEN_CIDRS = {"0.0.0.0/0", "::/0"}


class NoIngressFromInternet(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Security groups take no ingress from 0.0.0.0/0 or ::/0 (Ray ports are reached by security-group reference)",
            id="REELFLOW_AWS_5",
            categories=(CheckCategories.NETWORKING,),
            supported_resources=("aws_vpc_security_group_ingress_rule", "aws_security_group_rule", "aws_security_group"),
        )

    def scan_resource_conf(self, conf: dict[str, list[Any]]) -> CheckResult:
        if self.entity_type == "aws_vpc_security_group_ingress_rule":
            cidrs = _as_list(conf.get("cidr_ipv4")) + _as_list(conf.get("cidr_ipv6"))
        elif self.entity_type == "aws_security_group_rule":
            if _first(conf.get("type")) != "ingress":
                return CheckResult.PASSED
            cidrs = _as_list(conf.get("cidr_blocks")) + _as_list(conf.get("ipv6_cidr_blocks"))
        else:
            cidrs = []
            for rule in _as_list(conf.get("ingress")):
                if isinstance(rule, dict):
                    cidrs += _as_list(rule.get("cidr_blocks")) + _as_list(rule.get("ipv6_cidr_blocks"))
        return CheckResult.FAILED if OPEN_CIDRS & {str(c) for c in cidrs} else CheckResult.PASSED


class GpuWorkersScaleToZero(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="The training GPU worker Auto Scaling group has min_size 0 (scale to zero)",
            id="REELFLOW_AWS_6",
            categories=(CheckCategories.GENERAL_SECURITY,),
            supported_resources=("aws_autoscaling_group",),
        )

    def scan_resource_conf(self, conf: dict[str, list[Any]]) -> CheckResult:
        node_types = {
            str(_first(t.get("value")))
            for t in _as_list(conf.get("tag"))
            if isinstance(t, dict) and _first(t.get("key")) == "reelflow:ray-node-type"
        }
        if not any("gpu" in n for n in node_types):
            return CheckResult.UNKNOWN  # not a GPU group
        return CheckResult.PASSED if _first(conf.get("min_size")) in (0, "0") else CheckResult.FAILED


check_doc_actions = PolicyDocumentNamesActions()
check_inline_actions = InlinePolicyNamesActions()
check_doc_resources = PolicyDocumentScopesResources()
check_inline_resources = InlinePolicyScopesResources()
check_bucket_kms = BucketEncryptedWithKms()
check_imdsv2 = Imdsv2HopLimitOne()
check_ingress = NoIngressFromInternet()
check_gpu_zero = GpuWorkersScaleToZero()
