data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  cluster_name    = "${var.name_prefix}-prefect"
  flow_run_family = "${var.name_prefix}-flow-run"

  cluster_arn             = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:cluster/${local.cluster_name}"
  flow_run_task_def_arns  = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${local.flow_run_family}:*"
  cluster_task_arns       = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${local.cluster_name}/*"
  prefect_container_name  = "prefect"
  flow_run_log_prefix     = "flow-run"
  worker_log_prefix       = "worker"
  passable_task_role_arns = [aws_iam_role.flow_run.arn, aws_iam_role.execution.arn]
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/reelflow/${var.name_prefix}/prefect"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_ecs_cluster" "this" {
  name = local.cluster_name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  configuration {
    execute_command_configuration {
      kms_key_id = var.kms_key_arn
      logging    = "OVERRIDE"
      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.this.name
      }
    }
  }

  tags = var.tags
}

# ---------------------------------------------------------------------------
# IAM
#   execution: ECS agent pulls the image, writes logs, reads the API-key secret.
#   worker:    the Prefect ECS worker starts, watches and stops flow-run tasks and may pass
#              exactly two named roles (flow_run, execution) to ECS - never "*".
#   flow_run:  the flow itself: lists/reads raw video, writes ledger/index/report to shards.
# ---------------------------------------------------------------------------
data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    sid     = "EcsTasksAssumeRole"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name_prefix}-prefect-execution"
  description        = "ECS task execution role of the Prefect worker and flow runs"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role" "worker" {
  name               = "${var.name_prefix}-prefect-worker"
  description        = "Task role of the Prefect ECS worker"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role" "flow_run" {
  name               = "${var.name_prefix}-prefect-flow-run"
  description        = "Task role of reelflow flow runs"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "WriteTaskLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
  }

  statement {
    sid       = "ReadPrefectApiKey"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.prefect_api_key_secret_arn]
  }

  dynamic "statement" {
    for_each = var.prefect_api_key_kms_key_arn == null ? [] : [var.prefect_api_key_kms_key_arn]
    content {
      sid       = "DecryptPrefectApiKey"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "RunFlowRunTasksInThisCluster"
    actions   = ["ecs:RunTask"]
    resources = [local.flow_run_task_def_arns]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [local.cluster_arn]
    }
  }

  statement {
    sid       = "WatchAndStopFlowRunTasks"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = [local.cluster_task_arns]
  }

  # The worker tags the tasks it starts with the flow-run id.
  statement {
    sid       = "TagFlowRunTasksAtLaunch"
    actions   = ["ecs:TagResource"]
    resources = [local.cluster_task_arns]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }

  # ecs:DescribeTaskDefinition has no resource-level permissions in IAM (AWS requires "*");
  # it is read-only and the worker needs it to resolve the flow-run task definition.
  statement {
    sid       = "ResolveTaskDefinition"
    actions   = ["ecs:DescribeTaskDefinition"]
    resources = ["*"]
  }

  statement {
    sid       = "StreamFlowRunLogs"
    actions   = ["logs:GetLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:log-stream:${local.flow_run_log_prefix}/*"]
  }

  statement {
    sid       = "PassOnlyTheFlowRunRoles"
    actions   = ["iam:PassRole"]
    resources = local.passable_task_role_arns
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "flow_run" {
  statement {
    sid       = "ListRawVideo"
    actions   = ["s3:ListBucket"]
    resources = [var.raw_video_bucket_arn]
  }

  statement {
    sid       = "ReadRawVideoManifests"
    actions   = ["s3:GetObject"]
    resources = ["${var.raw_video_bucket_arn}/*"]
  }

  statement {
    sid       = "ListShards"
    actions   = ["s3:ListBucket"]
    resources = [var.curated_shards_bucket_arn]
  }

  statement {
    sid       = "WriteLedgerIndexReport"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${var.curated_shards_bucket_arn}/*"]
  }

  statement {
    sid       = "UseLakeKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "logs-and-api-key"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

resource "aws_iam_role_policy" "worker" {
  name   = "run-flow-run-tasks"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role_policy" "flow_run" {
  name   = "read-raw-write-curation-outputs"
  role   = aws_iam_role.flow_run.id
  policy = data.aws_iam_policy_document.flow_run.json
}

# ---------------------------------------------------------------------------
# Task definitions
# ---------------------------------------------------------------------------
resource "aws_ecs_task_definition" "worker" {
  family                   = "${var.name_prefix}-prefect-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.worker_cpu
  memory                   = var.worker_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.worker.arn

  # Fargate task storage; the container's root filesystem is read-only, Prefect writes under /tmp.
  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = local.prefect_container_name
    image                  = var.worker_image
    essential              = true
    readonlyRootFilesystem = true
    command                = ["prefect", "worker", "start", "--pool", var.work_pool_name, "--type", "ecs"]
    environment = [
      { name = "PREFECT_API_URL", value = var.prefect_api_url },
      { name = "PREFECT_HOME", value = "/tmp/prefect" },
      { name = "AWS_DEFAULT_REGION", value = local.region },
    ]
    secrets = [
      { name = "PREFECT_API_KEY", valueFrom = var.prefect_api_key_secret_arn },
    ]
    mountPoints = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = local.region
        awslogs-stream-prefix = local.worker_log_prefix
      }
    }
  }])

  tags = var.tags
}

resource "aws_ecs_task_definition" "flow_run" {
  family                   = local.flow_run_family
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.flow_run_cpu
  memory                   = var.flow_run_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.flow_run.arn

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([{
    name                   = local.prefect_container_name
    image                  = var.flow_run_image
    essential              = true
    readonlyRootFilesystem = true
    environment = [
      { name = "PREFECT_API_URL", value = var.prefect_api_url },
      { name = "PREFECT_HOME", value = "/tmp/prefect" },
      { name = "RAY_ADDRESS", value = var.ray_address },
      { name = "AWS_DEFAULT_REGION", value = local.region },
    ]
    secrets = [
      { name = "PREFECT_API_KEY", valueFrom = var.prefect_api_key_secret_arn },
    ]
    mountPoints = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = local.region
        awslogs-stream-prefix = local.flow_run_log_prefix
      }
    }
  }])

  tags = var.tags
}

resource "aws_ecs_service" "worker" {
  name             = "${var.name_prefix}-prefect-worker"
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.worker.arn
  desired_count    = 1
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  tags = var.tags
}
