# Composition tests: each module has its own behaviour tests; these check that the stack wires
# the modules together (addresses, network, buckets, keys) and passes the sizing through.

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
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555" }
  }
  mock_resource "aws_network_interface" {
    defaults = { private_ip = "10.40.0.10", id = "eni-0123456789abcdef0" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/mock" }
  }
  mock_resource "aws_launch_template" {
    defaults = { id = "lt-0123456789abcdef0", latest_version = 1 }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/reelflow/test" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/reelflow-test-prefect" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/reelflow-test-flow-run:1" }
  }
}

variables {
  name_prefix                 = "reelflow-test"
  availability_zones          = ["eu-west-1a", "eu-west-1b"]
  cpu_ami_id                  = "ami-0123456789abcdef0"
  gpu_ami_id                  = "ami-0fedcba9876543210"
  cpu_worker_instance_type    = "c7i.4xlarge"
  cpu_worker_max_size         = 2
  cpu_worker_desired_capacity = 1
  gpu_worker_instance_type    = "g6.xlarge"
  gpu_worker_max_size         = 1
  work_pool_name              = "reelflow-test-ecs"
  prefect_api_url             = "https://api.prefect.cloud/api/accounts/a/workspaces/w"
  prefect_api_key_secret_arn  = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:reelflow/prefect-api-key-AbCdEf"
  prefect_worker_image        = "example.org/reelflow/prefect-worker:1.0.0"
  flow_run_image              = "example.org/reelflow/reelflow:1.0.0"
}

run "prefect_worker_reaches_the_cluster" {
  command = apply

  assert {
    condition     = module.prefect_worker.work_pool_job_variables.env.RAY_ADDRESS == module.ray_cluster.ray_client_address
    error_message = "Flow runs must get the Ray cluster's Ray Client address as RAY_ADDRESS."
  }

  assert {
    condition     = output.ray_address == "ray://10.40.0.10:10001" && output.ray_gcs_address == "10.40.0.10:6379" && output.ray_dashboard_url == "http://10.40.0.10:8265"
    error_message = "The stack's Ray addresses must be the head's Ray Client, GCS and dashboard addresses."
  }

  assert {
    condition = (
      tolist(module.prefect_worker.work_pool_job_variables.network_configuration.securityGroups) == tolist([module.network.ray_client_security_group_id]) &&
      tolist(module.prefect_worker.work_pool_job_variables.network_configuration.subnets) == tolist(module.network.private_subnet_ids) &&
      module.prefect_worker.work_pool_job_variables.vpc_id == module.network.vpc_id
    )
    error_message = "The worker and flow runs must run in the stack's private subnets, in the ray_client security group (the only one the head's client ports admit)."
  }

  assert {
    condition     = length(module.network.private_subnet_ids) == 2 && output.work_pool_name == "reelflow-test-ecs"
    error_message = "One private subnet per availability zone; the configured work pool is served."
  }

  assert {
    condition     = output.work_pool_job_variables == module.prefect_worker.work_pool_job_variables && output.ecs_cluster_name == module.prefect_worker.ecs_cluster_name
    error_message = "The stack re-exports the worker's job variables and ECS cluster."
  }
}

run "gpu_group_scales_to_zero" {
  command = apply

  assert {
    condition     = module.ray_cluster.worker_group_sizes.training_gpu.min_size == 0 && module.ray_cluster.worker_group_sizes.training_gpu.desired_capacity == 0
    error_message = "The training GPU group must have min size 0 and start at 0."
  }

  assert {
    condition = module.ray_cluster.worker_group_sizes.curation_cpu == {
      min_size = 0, max_size = 2, desired_capacity = 1
    } && module.ray_cluster.worker_group_sizes.training_gpu.max_size == 1
    error_message = "The stack's worker sizing must reach the Auto Scaling groups."
  }

  assert {
    condition     = output.worker_autoscaling_group_names == module.ray_cluster.worker_autoscaling_group_names
    error_message = "The stack exports the worker Auto Scaling group names."
  }
}

run "gpu_group_min_stays_zero_when_scaled_up" {
  command = apply

  variables {
    cpu_worker_min_size         = 1
    gpu_worker_max_size         = 4
    gpu_worker_desired_capacity = 2
  }

  assert {
    condition     = module.ray_cluster.worker_group_sizes.training_gpu == { min_size = 0, max_size = 4, desired_capacity = 2 }
    error_message = "Scaling the GPU group up raises desired capacity only; its minimum stays 0."
  }

  assert {
    condition     = module.ray_cluster.worker_group_sizes.curation_cpu.min_size == 1
    error_message = "cpu_worker_min_size must reach the curation group (prod keeps one worker up)."
  }
}

run "lake_buckets_scope_the_cluster_iam" {
  command = apply

  assert {
    condition = module.ray_cluster.s3_bucket_arns_by_role.curation == sort([
      module.data_lake.bucket_arns["raw_video"], module.data_lake.bucket_arns["curated_shards"],
    ])
    error_message = "Curation workers must be scoped to the lake's raw-video and curated-shards buckets, nothing else."
  }

  assert {
    condition = module.ray_cluster.s3_bucket_arns_by_role.training == sort([
      module.data_lake.bucket_arns["curated_shards"], module.data_lake.bucket_arns["checkpoints"],
    ])
    error_message = "Training workers must be scoped to the lake's curated-shards and checkpoints buckets, nothing else."
  }

  assert {
    condition     = length(distinct(values(module.data_lake.bucket_arns))) == 3
    error_message = "The three lake buckets must be distinct (otherwise the scoping assertions above prove nothing)."
  }

  assert {
    condition = (
      output.bucket_names == module.data_lake.bucket_names &&
      output.raw_video_uri == "s3://${module.data_lake.bucket_names["raw_video"]}/" &&
      output.curated_shards_uri == "s3://${module.data_lake.bucket_names["curated_shards"]}/" &&
      output.checkpoints_uri == "s3://${module.data_lake.bucket_names["checkpoints"]}/"
    )
    error_message = "The stack exports the lake's bucket names and their s3:// URIs."
  }

  assert {
    condition     = output.prefect_api_url == var.prefect_api_url
    error_message = "The stack exports the Prefect API URL the worker uses."
  }
}
