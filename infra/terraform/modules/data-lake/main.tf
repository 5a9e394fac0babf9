data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition

  # Logical bucket -> name suffix. The keys are the contract used by the other modules.
  buckets = {
    raw_video      = "raw-video"
    curated_shards = "curated-shards"
    checkpoints    = "checkpoints"
  }
}

resource "aws_iam_service_linked_role" "autoscaling" {
  count = var.create_autoscaling_service_linked_role ? 1 : 0

  aws_service_name = "autoscaling.amazonaws.com"
  description      = "EC2 Auto Scaling (reelflow Ray workers)"
}

# One customer-managed key encrypts every bucket, the CloudWatch log groups of the
# other modules, and the EBS volumes of the Ray nodes.
resource "aws_kms_key" "lake" {
  description             = "${var.name_prefix} data lake, logs and Ray node volumes"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # The AWS-recommended default statement: the account root may administer the key,
        # which delegates all other access to IAM policies (each scoped to this key's ARN).
        Sid       = "AccountRootAdministersKey"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        # CloudWatch Logs encrypts the VPC flow-log and Prefect worker log groups with this key,
        # only for log groups in this account and region.
        Sid       = "CloudWatchLogsUseKey"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action = [
          "kms:Encrypt",
          "kms:Decrypt",
          "kms:ReEncryptFrom",
          "kms:ReEncryptTo",
          "kms:GenerateDataKey",
          "kms:GenerateDataKeyWithoutPlaintext",
          "kms:DescribeKey",
        ]
        Resource = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"
          }
        }
      },
      {
        # EC2 Auto Scaling launches Ray workers with KMS-encrypted EBS volumes.
        Sid       = "AutoScalingUsesKeyForEbs"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling" }
        Action = [
          "kms:Encrypt",
          "kms:Decrypt",
          "kms:ReEncryptFrom",
          "kms:ReEncryptTo",
          "kms:GenerateDataKeyWithoutPlaintext",
          "kms:DescribeKey",
          "kms:CreateGrant",
        ]
        Resource = "*"
        Condition = {
          StringEquals = { "kms:ViaService" = "ec2.${local.region}.amazonaws.com" }
        }
      },
    ]
  })

  tags = var.tags

  depends_on = [aws_iam_service_linked_role.autoscaling]
}

resource "aws_kms_alias" "lake" {
  name          = "alias/${var.name_prefix}-data-lake"
  target_key_id = aws_kms_key.lake.key_id
}

# ---------------------------------------------------------------------------
# Server access logs. S3 cannot deliver server access logs to a bucket that uses
# SSE-KMS, so this one bucket uses SSE-S3 (AES-256).
# ---------------------------------------------------------------------------
resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_18:This is the access-log destination; logging it to itself would loop.
  #checkov:skip=CKV_AWS_144:Access logs are regional audit data; cross-region replication is not required for them.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events for access-log objects; notifications would be noise.
  #checkov:skip=CKV_AWS_145:S3 server access logging only supports SSE-S3 destinations, SSE-KMS is not allowed by AWS.
  bucket        = "${var.name_prefix}-access-logs"
  force_destroy = var.force_destroy
  tags          = merge(var.tags, { "reelflow:bucket" = "access-logs" })
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  #checkov:skip=REELFLOW_AWS_2:S3 server access logging only supports SSE-S3 destinations, SSE-KMS is not allowed by AWS.
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
    expiration {
      days = var.access_log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.access_logs.arn, "${aws_s3_bucket.access_logs.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "S3ServerAccessLogsDelivery"
        Effect    = "Allow"
        Principal = { Service = "logging.s3.amazonaws.com" }
        Action    = "s3:PutObject"
        Resource  = "${aws_s3_bucket.access_logs.arn}/*"
        Condition = {
          StringEquals = { "aws:SourceAccount" = local.account_id }
          ArnLike      = { "aws:SourceArn" = [for b in aws_s3_bucket.lake : b.arn] }
        }
      },
    ]
  })
  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}

# ---------------------------------------------------------------------------
# The data-lake buckets: raw video, curated shards, training checkpoints.
# ---------------------------------------------------------------------------
resource "aws_s3_bucket" "lake" {
  #checkov:skip=CKV_AWS_144:Single-region data lake; raw video is re-obtainable from the licensor and shards are rebuilt by the curate flow, so cross-region replication is a cost decision left to the operator.
  #checkov:skip=CKV2_AWS_62:The flows are scheduled by Prefect, not triggered by S3 events; no consumer for event notifications exists.
  for_each = local.buckets

  bucket        = "${var.name_prefix}-${each.value}"
  force_destroy = var.force_destroy
  tags          = merge(var.tags, { "reelflow:bucket" = each.value })
}

resource "aws_s3_bucket_public_access_block" "lake" {
  for_each = local.buckets

  bucket                  = aws_s3_bucket.lake[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "lake" {
  for_each = local.buckets

  bucket = aws_s3_bucket.lake[each.key].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "lake" {
  for_each = local.buckets

  bucket = aws_s3_bucket.lake[each.key].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  for_each = local.buckets

  bucket = aws_s3_bucket.lake[each.key].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.lake.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "lake" {
  for_each = local.buckets

  bucket        = aws_s3_bucket.lake[each.key].id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "${each.key}/"
}

resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  for_each = local.buckets

  bucket = aws_s3_bucket.lake[each.key].id

  rule {
    id     = "data-lake-hygiene"
    status = "Enabled"
    filter {}

    # Interrupted shard or checkpoint writes leave invisible, billed parts behind.
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }

    # Versioning protects against overwrites; old versions do not live forever.
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    # Raw video is read once per curation run: move it to infrequent access.
    dynamic "transition" {
      for_each = each.key == "raw_video" ? [var.raw_video_ia_transition_days] : []
      content {
        days          = transition.value
        storage_class = "STANDARD_IA"
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.lake]
}

resource "aws_s3_bucket_policy" "lake" {
  for_each = local.buckets

  bucket = aws_s3_bucket.lake[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.lake[each.key].arn, "${aws_s3_bucket.lake[each.key].arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyTlsOlderThan12"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.lake[each.key].arn, "${aws_s3_bucket.lake[each.key].arn}/*"]
        Condition = { NumericLessThan = { "s3:TlsVersion" = "1.2" } }
      },
      {
        Sid       = "DenyObjectsNotEncryptedWithLakeKey"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = "${aws_s3_bucket.lake[each.key].arn}/*"
        Condition = {
          StringNotEqualsIfExists = {
            "s3:x-amz-server-side-encryption-aws-kms-key-id" = aws_kms_key.lake.arn
          }
        }
      },
    ]
  })
  depends_on = [aws_s3_bucket_public_access_block.lake]
}
