data "aws_region" "current" {}

locals {
  region = data.aws_region.current.name

  head_ip = aws_network_interface.head.private_ip

  # Every Ray port is pinned so that the network module's security groups can open
  # exactly these ranges (6379-6385 and 10002-19999) between nodes.
  ray_port_args = join(" ", [
    "--node-manager-port=6380",
    "--object-manager-port=6381",
    "--runtime-env-agent-port=6382",
    "--dashboard-agent-grpc-port=6383",
    "--dashboard-agent-listen-port=6384",
    "--metrics-export-port=6385",
    "--min-worker-port=10002",
    "--max-worker-port=19999",
  ])

  head_start_args = join(" ", [
    "--head",
    "--node-ip-address=${local.head_ip}",
    "--port=6379",
    "--ray-client-server-port=10001",
    "--dashboard-host=0.0.0.0",
    "--dashboard-port=8265",
    "--num-cpus=0",
    "--num-gpus=0",
    local.ray_port_args,
  ])

  # Worker groups. `resources` lets the curate and train flows pin work to the right pool.
  worker_groups = {
    curation_cpu = {
      node_type      = "curation-cpu-worker"
      ami_id         = var.cpu_ami_id
      instance_type  = var.cpu_worker_instance_type
      volume_size    = var.cpu_worker_volume_size_gb
      role           = "curation"
      resources_json = jsonencode({ curation = 1 })
    }
    training_gpu = {
      node_type      = "training-gpu-worker"
      ami_id         = var.gpu_ami_id
      instance_type  = var.gpu_worker_instance_type
      volume_size    = var.gpu_worker_volume_size_gb
      role           = "training"
      resources_json = jsonencode({ training = 1 })
    }
  }
}

# ---------------------------------------------------------------------------
# IAM: one role per node kind. Head: no AWS permissions (it schedules, it runs no tasks).
# Curation workers: read raw video, write shards. Training workers: read shards, write
# checkpoints. Nothing more.
# ---------------------------------------------------------------------------
data "aws_iam_policy_document" "ec2_assume" {
  statement {
    sid     = "Ec2AssumesRole"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  for_each = toset(["head", "curation", "training"])

  name               = "${var.name_prefix}-ray-${each.key}"
  description        = "Ray ${each.key} node role (reelflow)"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = var.tags
}

resource "aws_iam_instance_profile" "node" {
  for_each = aws_iam_role.node

  name = each.value.name
  role = each.value.name
  tags = var.tags
}

data "aws_iam_policy_document" "curation" {
  statement {
    sid       = "ListRawVideo"
    actions   = ["s3:ListBucket"]
    resources = [var.raw_video_bucket_arn]
  }

  statement {
    sid       = "ReadRawVideo"
    actions   = ["s3:GetObject"]
    resources = ["${var.raw_video_bucket_arn}/*"]
  }

  statement {
    sid       = "ListShards"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [var.curated_shards_bucket_arn]
  }

  # GetObject on the output is what makes a rerun resume: stage tables already written are read back.
  statement {
    sid = "WriteShards"
    actions = [
      "s3:PutObject",
      "s3:GetObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
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

data "aws_iam_policy_document" "training" {
  statement {
    sid       = "ListShards"
    actions   = ["s3:ListBucket"]
    resources = [var.curated_shards_bucket_arn]
  }

  statement {
    sid       = "ReadShards"
    actions   = ["s3:GetObject"]
    resources = ["${var.curated_shards_bucket_arn}/*"]
  }

  statement {
    sid       = "ListCheckpoints"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [var.checkpoints_bucket_arn]
  }

  # GetObject: a stage starts from the previous stage's checkpoint. DeleteObject: Ray Train's
  # CheckpointConfig(num_to_keep=...) prunes old checkpoints (versioning keeps them recoverable).
  statement {
    sid = "WriteCheckpoints"
    actions = [
      "s3:PutObject",
      "s3:GetObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${var.checkpoints_bucket_arn}/*"]
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

resource "aws_iam_role_policy" "curation" {
  name   = "read-raw-write-shards"
  role   = aws_iam_role.node["curation"].id
  policy = data.aws_iam_policy_document.curation.json
}

resource "aws_iam_role_policy" "training" {
  name   = "read-shards-write-checkpoints"
  role   = aws_iam_role.node["training"].id
  policy = data.aws_iam_policy_document.training.json
}

# ---------------------------------------------------------------------------
# Head node. Its network interface is a separate resource so that its private IP, the
# address every worker and client uses, survives replacing the instance.
# ---------------------------------------------------------------------------
resource "aws_network_interface" "head" {
  subnet_id       = var.subnet_ids[0]
  security_groups = [var.head_security_group_id]
  description     = "${var.name_prefix} Ray head (stable address)"
  tags            = merge(var.tags, { Name = "${var.name_prefix}-ray-head" })
}

resource "aws_instance" "head" {
  ami                  = var.cpu_ami_id
  instance_type        = var.head_instance_type
  iam_instance_profile = aws_iam_instance_profile.node["head"].name
  ebs_optimized        = true
  monitoring           = true

  user_data_base64 = base64encode(templatefile("${path.module}/templates/ray-node.sh.tftpl", {
    node_type      = "head"
    ray_os_user    = var.ray_os_user
    ray_executable = var.ray_executable
    region         = local.region
    ray_start_args = local.head_start_args
  }))
  user_data_replace_on_change = true

  network_interface {
    network_interface_id = aws_network_interface.head.id
    device_index         = 0
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.head_volume_size_gb
    encrypted             = true
    kms_key_id            = var.kms_key_arn
    delete_on_termination = true
  }

  tags        = merge(var.tags, { Name = "${var.name_prefix}-ray-head", "reelflow:ray-node-type" = "head" })
  volume_tags = merge(var.tags, { Name = "${var.name_prefix}-ray-head" })
}

# ---------------------------------------------------------------------------
# Worker groups: a launch template and an Auto Scaling group each.
# ---------------------------------------------------------------------------
resource "aws_launch_template" "worker" {
  for_each = local.worker_groups

  name_prefix   = "${var.name_prefix}-ray-${each.key}-"
  description   = "Ray ${each.value.node_type}: joins the head at ${local.head_ip}:6379"
  image_id      = each.value.ami_id
  instance_type = each.value.instance_type
  ebs_optimized = true

  user_data = base64encode(templatefile("${path.module}/templates/ray-node.sh.tftpl", {
    node_type      = each.value.node_type
    ray_os_user    = var.ray_os_user
    ray_executable = var.ray_executable
    region         = local.region
    ray_start_args = "--address=${local.head_ip}:6379 --resources='${each.value.resources_json}' ${local.ray_port_args}"
  }))

  iam_instance_profile {
    arn = aws_iam_instance_profile.node[each.value.role].arn
  }

  network_interfaces {
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = [var.worker_security_group_id]
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = var.root_device_name
    ebs {
      volume_type           = "gp3"
      volume_size           = each.value.volume_size
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name_prefix}-ray-${each.key}", "reelflow:ray-node-type" = each.value.node_type })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name_prefix}-ray-${each.key}" })
  }

  tags = var.tags
}

# Curation CPU workers: decode, transcode and score clips for the curate flow.
resource "aws_autoscaling_group" "curation_cpu" {
  name                = "${var.name_prefix}-ray-curation_cpu"
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.cpu_worker_min_size
  max_size            = var.cpu_worker_max_size
  desired_capacity    = var.cpu_worker_desired_capacity
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.worker["curation_cpu"].id
    version = aws_launch_template.worker["curation_cpu"].latest_version
  }

  # A new launch template version (new AMI, new head address) rolls the workers.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.name_prefix}-ray-curation_cpu"
    propagate_at_launch = true
  }

  tag {
    key                 = "reelflow:ray-node-type"
    value               = "curation-cpu-worker"
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = var.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    precondition {
      condition     = var.cpu_worker_min_size <= var.cpu_worker_desired_capacity && var.cpu_worker_desired_capacity <= var.cpu_worker_max_size
      error_message = "curation_cpu: need min_size (var.cpu_worker_min_size) <= desired_capacity <= max_size."
    }
  }
}

# Training GPU workers. min_size is 0 - not a variable - so the group always scales to zero
# between training runs; raise desired_capacity to train.
resource "aws_autoscaling_group" "training_gpu" {
  name                = "${var.name_prefix}-ray-training_gpu"
  vpc_zone_identifier = var.subnet_ids
  min_size            = 0
  max_size            = var.gpu_worker_max_size
  desired_capacity    = var.gpu_worker_desired_capacity
  health_check_type   = "EC2"

  launch_template {
    id      = aws_launch_template.worker["training_gpu"].id
    version = aws_launch_template.worker["training_gpu"].latest_version
  }

  # A new launch template version (new AMI, new head address) rolls the workers.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.name_prefix}-ray-training_gpu"
    propagate_at_launch = true
  }

  tag {
    key                 = "reelflow:ray-node-type"
    value               = "training-gpu-worker"
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = var.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    precondition {
      condition     = 0 <= var.gpu_worker_desired_capacity && var.gpu_worker_desired_capacity <= var.gpu_worker_max_size
      error_message = "training_gpu: need min_size (0) <= desired_capacity <= max_size."
    }
  }
}
