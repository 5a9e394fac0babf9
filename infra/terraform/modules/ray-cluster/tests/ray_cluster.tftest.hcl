mock_provider "aws" {
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_network_interface" {
    defaults = { private_ip = "10.40.0.10", id = "eni-0123456789abcdef0" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/mock" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_launch_template" {
    defaults = { id = "lt-0123456789abcdef0", latest_version = 1 }
  }
}

variables {
  name_prefix               = "reelflow-test"
  subnet_ids                = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  head_security_group_id    = "sg-0aaaaaaaaaaaaaaaa"
  worker_security_group_id  = "sg-0bbbbbbbbbbbbbbbb"
  kms_key_arn               = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
  raw_video_bucket_arn      = "arn:aws:s3:::reelflow-test-raw-video"
  curated_shards_bucket_arn = "arn:aws:s3:::reelflow-test-curated-shards"
  checkpoints_bucket_arn    = "arn:aws:s3:::reelflow-test-checkpoints"
  cpu_ami_id                = "ami-0123456789abcdef0"
  gpu_ami_id                = "ami-0fedcba9876543210"
}

run "gpu_group_scales_to_zero" {
  command = apply

  assert {
    condition     = aws_autoscaling_group.training_gpu.min_size == 0 && aws_autoscaling_group.training_gpu.desired_capacity == 0
    error_message = "The GPU worker group must have min size 0 and start at 0."
  }

  assert {
    condition     = aws_autoscaling_group.curation_cpu.max_size == 8 && aws_autoscaling_group.training_gpu.max_size == 4
    error_message = "Default group maxima changed unexpectedly."
  }

  assert {
    condition     = output.ray_address == "10.40.0.10:6379" && output.ray_client_address == "ray://10.40.0.10:10001"
    error_message = "The Ray addresses must point at the head's stable network interface."
  }
}

run "launch_templates_join_the_head_with_imdsv2" {
  command = apply

  assert {
    condition = alltrue([
      for lt in values(aws_launch_template.worker) :
      one(lt.metadata_options).http_tokens == "required" && one(lt.metadata_options).http_put_response_hop_limit == 1
    ]) && one(aws_instance.head.metadata_options).http_tokens == "required"
    error_message = "IMDSv2 (http_tokens = required, hop limit 1) is mandatory on every node."
  }

  assert {
    condition = alltrue([
      for lt in values(aws_launch_template.worker) :
      strcontains(base64decode(lt.user_data), "ray start --block --address=10.40.0.10:6379")
    ])
    error_message = "Worker user data must run `ray start` against the head's address."
  }

  assert {
    condition     = strcontains(base64decode(aws_launch_template.worker["training_gpu"].user_data), "--resources='{\"training\":1}'") && strcontains(base64decode(aws_launch_template.worker["curation_cpu"].user_data), "--resources='{\"curation\":1}'")
    error_message = "Worker groups advertise the custom resources the flows schedule on."
  }

  assert {
    condition     = strcontains(base64decode(aws_instance.head.user_data_base64), "--head --node-ip-address=10.40.0.10 --port=6379") && strcontains(base64decode(aws_instance.head.user_data_base64), "--num-cpus=0")
    error_message = "The head starts with --head on its stable IP and runs no tasks."
  }

  assert {
    condition = alltrue([
      for lt in values(aws_launch_template.worker) :
      one(one(lt.block_device_mappings).ebs).encrypted == "true" && one(one(lt.block_device_mappings).ebs).kms_key_id == var.kms_key_arn && one(lt.network_interfaces).associate_public_ip_address == "false"
    ]) && one(aws_instance.head.root_block_device).encrypted
    error_message = "Node volumes are KMS-encrypted and workers get no public IP."
  }
}

run "instance_profiles_are_least_privilege" {
  command = apply

  # No action anywhere is a wildcard.
  assert {
    condition = alltrue(flatten([
      for d in [data.aws_iam_policy_document.curation, data.aws_iam_policy_document.training] : [
        for s in d.statement : [for a in s.actions : !strcontains(a, "*")]
      ]
    ]))
    error_message = "IAM actions must be named, never wildcards."
  }

  # Curation: read raw, write shards - and nothing on checkpoints.
  assert {
    condition = alltrue(flatten([
      for s in data.aws_iam_policy_document.curation.statement : [
        for r in s.resources : contains([
          var.raw_video_bucket_arn, "${var.raw_video_bucket_arn}/*",
          var.curated_shards_bucket_arn, "${var.curated_shards_bucket_arn}/*",
          var.kms_key_arn,
        ], r)
      ]
    ]))
    error_message = "Curation workers may only touch the raw-video and shard buckets (and the lake key)."
  }

  assert {
    condition = alltrue([
      for s in data.aws_iam_policy_document.curation.statement :
      length(setintersection(s.actions, ["s3:PutObject", "s3:DeleteObject"])) == 0 if anytrue([for r in s.resources : startswith(r, var.raw_video_bucket_arn)])
    ])
    error_message = "Curation workers must not write or delete raw video."
  }

  # Training: read shards, write checkpoints - and nothing on raw video.
  assert {
    condition = alltrue(flatten([
      for s in data.aws_iam_policy_document.training.statement : [
        for r in s.resources : contains([
          var.curated_shards_bucket_arn, "${var.curated_shards_bucket_arn}/*",
          var.checkpoints_bucket_arn, "${var.checkpoints_bucket_arn}/*",
          var.kms_key_arn,
        ], r)
      ]
    ]))
    error_message = "Training workers may only touch the shard and checkpoint buckets (and the lake key)."
  }

  assert {
    condition = alltrue([
      for s in data.aws_iam_policy_document.training.statement :
      length(setintersection(s.actions, ["s3:PutObject", "s3:DeleteObject"])) == 0 if anytrue([for r in s.resources : startswith(r, var.curated_shards_bucket_arn)])
    ])
    error_message = "Training workers must not write or delete shards."
  }

  assert {
    condition     = aws_iam_role_policy.curation.role == aws_iam_role.node["curation"].id && aws_iam_role_policy.training.role == aws_iam_role.node["training"].id
    error_message = "Each worker role carries only its own policy."
  }
}

run "rejects_bad_ami" {
  command = plan

  variables {
    gpu_ami_id = "ubuntu-latest"
  }

  expect_failures = [var.gpu_ami_id]
}

run "gpu_group_keeps_min_zero_when_scaled_up" {
  command = plan

  variables {
    gpu_worker_desired_capacity = 2
  }

  assert {
    condition     = aws_autoscaling_group.training_gpu.min_size == 0 && aws_autoscaling_group.training_gpu.desired_capacity == 2
    error_message = "Scaling the GPU group up for a run must not raise its minimum."
  }
}

run "rejects_desired_above_max" {
  command = plan

  variables {
    gpu_worker_desired_capacity = 5
    gpu_worker_max_size         = 4
  }

  expect_failures = [aws_autoscaling_group.training_gpu]
}
