"""checkov over infra/terraform and infra/kubernetes, with reelflow's custom policies.

Zero failed checks; every skip carries a written reason; the custom policies run, and they
catch violations (proved on a deliberately bad fixture).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"

CUSTOM_TERRAFORM_CHECKS = {f"REELFLOW_AWS_{i}" for i in range(1, 7)}
CUSTOM_KUBERNETES_CHECKS = {"REELFLOW_K8S_1", "REELFLOW_K8S_2"}


def _checkov(checkov_bin: Path, policies: Path, *targets: Path, frameworks: tuple[str, ...], cwd: Path) -> list[dict]:
    cmd = [str(checkov_bin)]
    for t in targets:
        cmd += ["-d", str(t)]
    cmd += [
        "--framework", *frameworks,
        "--external-checks-dir", str(policies),
        "--skip-download",
        "--output", "json",
        "--compact",
    ]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LOG_LEVEL": "WARNING"})
    # checkov exits 1 when a check failed; anything else (or unparsable output) is an error.
    assert proc.returncode in (0, 1), f"checkov errored ({proc.returncode}):\n{proc.stderr[-4000:]}"
    # With several targets checkov prints more than one JSON document (objects and lists).
    reports: list[dict] = []
    decoder, text, pos = json.JSONDecoder(), proc.stdout, 0
    try:
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            doc, pos = decoder.raw_decode(text, pos)
            reports.extend(doc if isinstance(doc, list) else [doc])
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    assert reports, f"checkov printed nothing:\n{proc.stderr[-4000:]}"
    return reports


def test_checkov_version_is_the_pinned_one(checkov_bin: Path) -> None:
    pinned = re.search(r"^checkov==([\w.]+)$", (INFRA / "requirements-checkov.txt").read_text(), re.M)
    assert pinned, "infra/requirements-checkov.txt must pin checkov==X.Y.Z"
    out = subprocess.run([str(checkov_bin), "--version"], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == pinned.group(1), f"installed checkov {out.stdout.strip()} != pinned {pinned.group(1)}"


def test_checkov_reports_no_failed_checks(checkov_bin: Path, checkov_policies: Path, tmp_path: Path) -> None:
    reports = _checkov(
        checkov_bin, checkov_policies, INFRA / "terraform", INFRA / "kubernetes",
        frameworks=("terraform", "kubernetes"), cwd=tmp_path,
    )
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"terraform", "kubernetes"}, f"unexpected checkov frameworks: {list(by_type)}"

    failures = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']}): {c['check_name']}"
        for r in reports for c in r["results"]["failed_checks"]
    ]
    assert not failures, "checkov failed checks:\n" + "\n".join(failures)
    for r in reports:
        assert r["summary"]["parsing_errors"] == 0, f"{r['check_type']}: parsing errors {r['summary']}"
        assert r["summary"]["passed"] > 0

    for r in reports:
        for c in r["results"]["skipped_checks"]:
            reason = (c.get("check_result") or {}).get("suppress_comment") or ""
            assert len(reason.strip()) >= 20, f"skip of {c['check_id']} on {c['resource']} has no written reason"

    passed_ids = {c["check_id"] for r in reports for c in r["results"]["passed_checks"]}
    missing = (CUSTOM_TERRAFORM_CHECKS | CUSTOM_KUBERNETES_CHECKS) - passed_ids
    assert not missing, f"custom policies did not run (or found nothing to check): {sorted(missing)}"


BAD_TERRAFORM = r'''
data "aws_iam_policy_document" "too_broad" {
  statement {
    actions   = ["s3:*"]
    resources = ["*"]
  }
  statement {
    actions   = ["iam:PassRole"]
    resources = ["arn:aws:iam::123456789012:role/*"]
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "sse_s3" {
  bucket = "some-bucket"
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_launch_template" "imdsv1" {
  name_prefix = "bad-"
  metadata_options {
    http_tokens = "optional"
  }
}

resource "aws_vpc_security_group_ingress_rule" "dashboard_open" {
  security_group_id = "sg-0123456789abcdef0"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 8265
  to_port           = 8265
}

resource "aws_autoscaling_group" "gpu" {
  name     = "gpu"
  min_size = 1
  max_size = 2
  tag {
    key                 = "reelflow:ray-node-type"
    value               = "training-gpu-worker"
    propagate_at_launch = true
  }
}
'''

BAD_RAYCLUSTER = '''
apiVersion: ray.io/v1
kind: RayCluster
metadata:
  name: bad
spec:
  headGroupSpec:
    rayStartParams: {}
    template:
      spec:
        containers:
        - name: ray-head
          image: reelflow:0.1.0
  workerGroupSpecs:
  - groupName: gpu
    minReplicas: 1
    maxReplicas: 2
    rayStartParams: {}
    template:
      spec:
        containers:
        - name: ray-worker
          image: reelflow:0.1.0
          securityContext:
            privileged: true
          resources:
            limits:
              nvidia.com/gpu: "1"
'''


def test_custom_policies_catch_violations(checkov_bin: Path, checkov_policies: Path, tmp_path: Path) -> None:
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "main.tf").write_text(BAD_TERRAFORM)
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "raycluster.yaml").write_text(BAD_RAYCLUSTER)
    reports = _checkov(
        checkov_bin, checkov_policies, tmp_path / "tf", tmp_path / "k8s",
        frameworks=("terraform", "kubernetes"), cwd=tmp_path,
    )
    failed = {c["check_id"] for r in reports for c in r["results"]["failed_checks"]}
    missed = (CUSTOM_TERRAFORM_CHECKS | CUSTOM_KUBERNETES_CHECKS) - failed
    assert not missed, f"custom policies let violations through: {sorted(missed)}"
