mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::mock-bucket" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555" }
  }
}

variables {
  name_prefix = "reelflow-test"
}

run "buckets_are_private_encrypted_and_versioned" {
  command = apply

  assert {
    condition     = length(aws_s3_bucket.lake) == 3 && alltrue([for k in ["raw_video", "curated_shards", "checkpoints"] : contains(keys(aws_s3_bucket.lake), k)])
    error_message = "The data lake must have the raw_video, curated_shards and checkpoints buckets."
  }

  assert {
    condition     = aws_kms_key.lake.enable_key_rotation
    error_message = "The data-lake KMS key must rotate."
  }

  assert {
    condition = alltrue([
      for c in aws_s3_bucket_server_side_encryption_configuration.lake :
      one(one(c.rule).apply_server_side_encryption_by_default).sse_algorithm == "aws:kms" &&
      one(one(c.rule).apply_server_side_encryption_by_default).kms_master_key_id == aws_kms_key.lake.arn
    ])
    error_message = "Every data-lake bucket must default to SSE-KMS with the lake key."
  }

  assert {
    condition = alltrue([
      for b in concat(values(aws_s3_bucket_public_access_block.lake), [aws_s3_bucket_public_access_block.access_logs]) :
      b.block_public_acls && b.block_public_policy && b.ignore_public_acls && b.restrict_public_buckets
    ])
    error_message = "Public access must be blocked on every bucket."
  }

  assert {
    condition     = alltrue([for v in aws_s3_bucket_versioning.lake : one(v.versioning_configuration).status == "Enabled"])
    error_message = "Versioning must be enabled on every data-lake bucket."
  }

  assert {
    condition     = alltrue([for o in aws_s3_bucket_ownership_controls.lake : one(o.rule).object_ownership == "BucketOwnerEnforced"])
    error_message = "ACLs must be disabled (BucketOwnerEnforced)."
  }
}

run "bucket_policies_deny_non_tls" {
  command = apply

  assert {
    condition = alltrue([
      for p in values(aws_s3_bucket_policy.lake) : anytrue([
        for s in jsondecode(p.policy).Statement :
        s.Effect == "Deny" && s.Principal == "*" && try(s.Condition.Bool["aws:SecureTransport"], "") == "false"
      ])
    ])
    error_message = "Every data-lake bucket policy must deny requests without TLS."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_s3_bucket_policy.access_logs.policy).Statement :
      s.Effect == "Deny" && try(s.Condition.Bool["aws:SecureTransport"], "") == "false"
    ])
    error_message = "The access-log bucket policy must deny requests without TLS."
  }
}

run "lifecycle_rules" {
  command = apply

  variables {
    raw_video_ia_transition_days       = 45
    noncurrent_version_expiration_days = 14
    abort_incomplete_multipart_days    = 3
  }

  assert {
    condition = alltrue([
      for l in values(aws_s3_bucket_lifecycle_configuration.lake) : anytrue([
        for r in l.rule : r.status == "Enabled" && length(r.abort_incomplete_multipart_upload) == 1 && try(r.abort_incomplete_multipart_upload[0].days_after_initiation, 0) == 3
      ])
    ])
    error_message = "Every bucket must abort incomplete multipart uploads."
  }

  assert {
    condition = alltrue([
      for l in values(aws_s3_bucket_lifecycle_configuration.lake) : anytrue([
        for r in l.rule : r.status == "Enabled" && try(r.noncurrent_version_expiration[0].noncurrent_days, 0) == 14
      ])
    ])
    error_message = "Every bucket must expire noncurrent versions."
  }

  assert {
    condition = anytrue([
      for r in aws_s3_bucket_lifecycle_configuration.lake["raw_video"].rule :
      anytrue([for t in r.transition : t.storage_class == "STANDARD_IA" && t.days == 45])
    ])
    error_message = "Raw video must transition to STANDARD_IA."
  }

  assert {
    condition = alltrue([
      for k in ["curated_shards", "checkpoints"] : alltrue([
        for r in aws_s3_bucket_lifecycle_configuration.lake[k].rule : length(r.transition) == 0
      ])
    ])
    error_message = "Only raw video moves to infrequent access; shards and checkpoints are hot."
  }
}

run "rejects_short_ia_transition" {
  command = plan

  variables {
    raw_video_ia_transition_days = 7
  }

  expect_failures = [var.raw_video_ia_transition_days]
}

run "key_policy_lets_auto_scaling_encrypt_worker_volumes" {
  command = apply

  variables {
    create_autoscaling_service_linked_role = true
  }

  assert {
    condition     = length(aws_iam_service_linked_role.autoscaling) == 1 && aws_iam_service_linked_role.autoscaling[0].aws_service_name == "autoscaling.amazonaws.com"
    error_message = "The Auto Scaling service-linked role is created on request."
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_kms_key.lake.policy).Statement :
      strcontains(jsonencode(s.Principal), "AWSServiceRoleForAutoScaling") && contains(s.Action, "kms:CreateGrant") && !contains(s.Action, "kms:*")
    ])
    error_message = "Auto Scaling may use the key for EBS (CreateGrant), without kms:*."
  }
}
