mock_provider "aws" {
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/reelflow/test/prefect" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/reelflow-test-prefect" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/reelflow-test-flow-run:1" }
  }
}

# Distinct role ARNs, so that the PassRole assertions can tell the roles apart.
override_resource {
  target = aws_iam_role.flow_run
  values = { arn = "arn:aws:iam::123456789012:role/reelflow-test-prefect-flow-run" }
}

override_resource {
  target = aws_iam_role.execution
  values = { arn = "arn:aws:iam::123456789012:role/reelflow-test-prefect-execution" }
}

override_resource {
  target = aws_iam_role.worker
  values = { arn = "arn:aws:iam::123456789012:role/reelflow-test-prefect-worker" }
}

variables {
  name_prefix                = "reelflow-test"
  work_pool_name             = "reelflow-test-ecs"
  prefect_api_url            = "https://api.prefect.cloud/api/accounts/a/workspaces/w"
  prefect_api_key_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:reelflow/prefect-api-key-AbCdEf"
  subnet_ids                 = ["subnet-0aaaaaaaaaaaaaaaa"]
  security_group_ids         = ["sg-0cccccccccccccccc"]
  vpc_id                     = "vpc-0123456789abcdef0"
  worker_image               = "example.org/reelflow/prefect-worker:1.0.0"
  flow_run_image             = "example.org/reelflow/reelflow:1.0.0"
  ray_address                = "ray://10.40.0.10:10001"
  kms_key_arn                = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
  raw_video_bucket_arn       = "arn:aws:s3:::reelflow-test-raw-video"
  curated_shards_bucket_arn  = "arn:aws:s3:::reelflow-test-curated-shards"
}

run "worker_runs_on_fargate_with_api_key_from_secrets_manager" {
  command = apply

  assert {
    condition     = aws_ecs_service.worker.launch_type == "FARGATE" && one(aws_ecs_service.worker.network_configuration).assign_public_ip == false
    error_message = "The worker is a private Fargate service."
  }

  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.worker.container_definitions)[0].command == ["prefect", "worker", "start", "--pool", "reelflow-test-ecs", "--type", "ecs"]
    )
    error_message = "The worker polls the configured ECS work pool."
  }

  assert {
    condition = alltrue([
      for td in [aws_ecs_task_definition.worker, aws_ecs_task_definition.flow_run] :
      jsondecode(td.container_definitions)[0].secrets == [{ name = "PREFECT_API_KEY", valueFrom = var.prefect_api_key_secret_arn }] &&
      !anytrue([for e in jsondecode(td.container_definitions)[0].environment : e.name == "PREFECT_API_KEY"])
    ])
    error_message = "The API key comes from Secrets Manager, never from a plain environment variable."
  }

  assert {
    condition     = anytrue([for e in jsondecode(aws_ecs_task_definition.flow_run.container_definitions)[0].environment : e.name == "RAY_ADDRESS" && e.value == "ray://10.40.0.10:10001"])
    error_message = "Flow runs get RAY_ADDRESS pointing at the Ray Client port of the head."
  }

  assert {
    condition     = alltrue([for td in [aws_ecs_task_definition.worker, aws_ecs_task_definition.flow_run] : jsondecode(td.container_definitions)[0].readonlyRootFilesystem])
    error_message = "Containers run with a read-only root filesystem."
  }

  assert {
    condition     = output.work_pool_job_variables.task_definition_arn == aws_ecs_task_definition.flow_run.arn && output.work_pool_job_variables.network_configuration.assignPublicIp == "DISABLED"
    error_message = "The work-pool job variables point at the flow-run task definition in private subnets."
  }

  assert {
    condition     = aws_cloudwatch_log_group.this.kms_key_id == var.kms_key_arn
    error_message = "Logs are KMS-encrypted."
  }
}

run "pass_role_is_scoped_to_named_roles" {
  command = apply

  assert {
    condition = alltrue(flatten([
      for s in data.aws_iam_policy_document.worker.statement : [
        for r in s.resources : r != "*" && contains([
          "arn:aws:iam::123456789012:role/reelflow-test-prefect-flow-run",
          "arn:aws:iam::123456789012:role/reelflow-test-prefect-execution",
        ], r)
      ] if contains(s.actions, "iam:PassRole")
    ]))
    error_message = "iam:PassRole may only name the flow-run and execution roles."
  }

  assert {
    condition = length([
      for s in data.aws_iam_policy_document.worker.statement : s if contains(s.actions, "iam:PassRole")
    ]) == 1
    error_message = "Exactly one statement grants iam:PassRole."
  }

  assert {
    condition = alltrue(flatten([
      for d in [data.aws_iam_policy_document.worker, data.aws_iam_policy_document.execution, data.aws_iam_policy_document.flow_run] : [
        for s in d.statement : [for a in s.actions : !strcontains(a, "*")]
      ]
    ]))
    error_message = "IAM actions must be named, never wildcards."
  }

  assert {
    condition = alltrue(flatten([
      for d in [data.aws_iam_policy_document.worker, data.aws_iam_policy_document.execution, data.aws_iam_policy_document.flow_run] : [
        for s in d.statement : s.actions == toset(["ecs:DescribeTaskDefinition"]) if contains(s.resources, "*")
      ]
    ]))
    error_message = "Resource \"*\" is only allowed for ecs:DescribeTaskDefinition, which has no resource-level permissions."
  }

  assert {
    condition = alltrue(flatten([
      for s in data.aws_iam_policy_document.execution.statement : [
        for r in s.resources : r == var.prefect_api_key_secret_arn if contains(s.actions, "secretsmanager:GetSecretValue")
      ]
    ]))
    error_message = "The execution role reads only the API-key secret."
  }

  assert {
    condition = alltrue(flatten([
      for s in data.aws_iam_policy_document.flow_run.statement : [
        for r in s.resources : !startswith(r, var.raw_video_bucket_arn) if length(setintersection(s.actions, ["s3:PutObject", "s3:DeleteObject"])) > 0
      ]
    ]))
    error_message = "Flow runs never write raw video."
  }
}

run "customer_managed_secret_key_is_decryptable" {
  command = apply

  variables {
    prefect_api_key_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/99999999-2222-3333-4444-555555555555"
  }

  assert {
    condition = anytrue([
      for s in data.aws_iam_policy_document.execution.statement :
      s.actions == toset(["kms:Decrypt"]) && s.resources == toset(["arn:aws:kms:eu-west-1:123456789012:key/99999999-2222-3333-4444-555555555555"])
    ])
    error_message = "With a CMK-encrypted secret the execution role may decrypt with that key only."
  }
}

run "rejects_plain_ray_address" {
  command = plan

  variables {
    ray_address = "10.40.0.10:6379"
  }

  expect_failures = [var.ray_address]
}
