data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # /20 private subnets from the bottom of the VPC range, a /24 public NAT subnet at the top.
  private_subnet_cidrs = [for i, _ in var.availability_zones : cidrsubnet(var.vpc_cidr, 20 - tonumber(split("/", var.vpc_cidr)[1]), i)]
  public_subnet_cidr   = cidrsubnet(var.vpc_cidr, 24 - tonumber(split("/", var.vpc_cidr)[1]), pow(2, 24 - tonumber(split("/", var.vpc_cidr)[1])) - 1)

  # Ray's ports are pinned by the ray-cluster module's `ray start` flags
  # (--port, --node-manager-port, --object-manager-port, --runtime-env-agent-port,
  # --dashboard-agent-grpc-port, --dashboard-agent-listen-port, --metrics-export-port,
  # --min-worker-port/--max-worker-port), so the cluster rules open exactly these.
  ray_cluster_port_ranges = {
    services = { from = 6379, to = 6385 }
    workers  = { from = 10002, to = 19999 }
  }
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(var.tags, { Name = "${var.name_prefix}-vpc" })
}

# Lock down the default security group: nothing uses it, nothing may.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "${var.name_prefix}-default-deny" })
}

resource "aws_subnet" "private" {
  count = length(var.availability_zones)

  vpc_id                  = aws_vpc.this.id
  cidr_block              = local.private_subnet_cidrs[count.index]
  availability_zone       = var.availability_zones[count.index]
  map_public_ip_on_launch = false
  tags                    = merge(var.tags, { Name = "${var.name_prefix}-private-${var.availability_zones[count.index]}", "reelflow:tier" = "private" })
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "${var.name_prefix}-private" })
}

resource "aws_route_table_association" "private" {
  count = length(var.availability_zones)

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# S3 traffic (raw video, shards, checkpoints) stays on the AWS network and costs no NAT data processing.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
  tags              = merge(var.tags, { Name = "${var.name_prefix}-s3" })
}

# ---------------------------------------------------------------------------
# Optional egress to the internet for the Prefect worker (Prefect Cloud API, image registry).
# ---------------------------------------------------------------------------
resource "aws_subnet" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id                  = aws_vpc.this.id
  cidr_block              = local.public_subnet_cidr
  availability_zone       = var.availability_zones[0]
  map_public_ip_on_launch = false
  tags                    = merge(var.tags, { Name = "${var.name_prefix}-public-nat", "reelflow:tier" = "public" })
}

resource "aws_internet_gateway" "this" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "${var.name_prefix}-igw" })
}

resource "aws_route_table" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "${var.name_prefix}-public" })
}

resource "aws_route" "public_internet" {
  count = var.enable_nat_gateway ? 1 : 0

  route_table_id         = aws_route_table.public[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this[0].id
}

resource "aws_route_table_association" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  subnet_id      = aws_subnet.public[0].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_eip" "nat" {
  #checkov:skip=CKV2_AWS_19:This Elastic IP belongs to the NAT gateway below, not to an EC2 instance.
  count = var.enable_nat_gateway ? 1 : 0

  domain = "vpc"
  tags   = merge(var.tags, { Name = "${var.name_prefix}-nat" })
}

resource "aws_nat_gateway" "this" {
  count = var.enable_nat_gateway ? 1 : 0

  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id
  tags          = merge(var.tags, { Name = "${var.name_prefix}-nat" })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route" "private_nat" {
  count = var.enable_nat_gateway ? 1 : 0

  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[0].id
}

# ---------------------------------------------------------------------------
# VPC flow logs, encrypted, kept a year.
# ---------------------------------------------------------------------------
resource "aws_cloudwatch_log_group" "flow_logs" {
  name              = "/reelflow/${var.name_prefix}/vpc-flow-logs"
  retention_in_days = var.flow_log_retention_days
  kms_key_id        = var.flow_log_kms_key_arn
  tags              = var.tags
}

resource "aws_iam_role" "flow_logs" {
  name = "${var.name_prefix}-vpc-flow-logs"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "vpc-flow-logs.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  })
  tags = var.tags
}

data "aws_iam_policy_document" "flow_logs" {
  statement {
    sid = "WriteFlowLogsToOwnGroup"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
      "logs:DescribeLogStreams",
    ]
    resources = ["${aws_cloudwatch_log_group.flow_logs.arn}:*"]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  name   = "write-flow-logs"
  role   = aws_iam_role.flow_logs.id
  policy = data.aws_iam_policy_document.flow_logs.json
}

resource "aws_flow_log" "this" {
  vpc_id          = aws_vpc.this.id
  traffic_type    = "ALL"
  log_destination = aws_cloudwatch_log_group.flow_logs.arn
  iam_role_arn    = aws_iam_role.flow_logs.arn
  tags            = var.tags
}

# ---------------------------------------------------------------------------
# Ray security groups. Head <-> workers only; the Ray client and dashboard ports are
# reachable from the "ray_client" group (the Prefect flow runs), never from a CIDR.
# Ray nodes get no internet egress: only the cluster itself and S3 (gateway endpoint).
# ---------------------------------------------------------------------------
resource "aws_security_group" "ray_head" {
  #checkov:skip=CKV2_AWS_5:Attached by the ray-cluster and prefect-worker modules that consume this module's outputs (see envs/*).
  name        = "${var.name_prefix}-ray-head"
  description = "Ray head node: GCS, dashboard and Ray Client, reachable from Ray workers and Ray clients only"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "${var.name_prefix}-ray-head" })
}

resource "aws_security_group" "ray_worker" {
  #checkov:skip=CKV2_AWS_5:Attached by the ray-cluster and prefect-worker modules that consume this module's outputs (see envs/*).
  name        = "${var.name_prefix}-ray-worker"
  description = "Ray worker nodes (curation CPU and training GPU), reachable from the head and other workers only"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "${var.name_prefix}-ray-worker" })
}

resource "aws_security_group" "ray_client" {
  #checkov:skip=CKV2_AWS_5:Attached by the ray-cluster and prefect-worker modules that consume this module's outputs (see envs/*).
  name        = "${var.name_prefix}-ray-client"
  description = "Ray clients (Prefect worker and flow runs): may reach the head's client and dashboard ports"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "${var.name_prefix}-ray-client" })
}

resource "aws_vpc_security_group_ingress_rule" "head_from_workers" {
  for_each = local.ray_cluster_port_ranges

  security_group_id            = aws_security_group.ray_head.id
  description                  = "Ray workers to head: ${each.key}"
  referenced_security_group_id = aws_security_group.ray_worker.id
  ip_protocol                  = "tcp"
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_ingress_rule" "head_from_clients" {
  for_each = toset([for p in var.ray_client_ports : tostring(p)])

  security_group_id            = aws_security_group.ray_head.id
  description                  = "Ray clients to head port ${each.value}"
  referenced_security_group_id = aws_security_group.ray_client.id
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
}

resource "aws_vpc_security_group_ingress_rule" "worker_from_head" {
  for_each = local.ray_cluster_port_ranges

  security_group_id            = aws_security_group.ray_worker.id
  description                  = "Ray head to workers: ${each.key}"
  referenced_security_group_id = aws_security_group.ray_head.id
  ip_protocol                  = "tcp"
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_ingress_rule" "worker_from_workers" {
  for_each = local.ray_cluster_port_ranges

  security_group_id            = aws_security_group.ray_worker.id
  description                  = "Ray workers to workers: ${each.key}"
  referenced_security_group_id = aws_security_group.ray_worker.id
  ip_protocol                  = "tcp"
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_egress_rule" "head_to_workers" {
  for_each = local.ray_cluster_port_ranges

  security_group_id            = aws_security_group.ray_head.id
  description                  = "Ray head to workers: ${each.key}"
  referenced_security_group_id = aws_security_group.ray_worker.id
  ip_protocol                  = "tcp"
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_egress_rule" "worker_to_head" {
  for_each = local.ray_cluster_port_ranges

  security_group_id            = aws_security_group.ray_worker.id
  description                  = "Ray workers to head: ${each.key}"
  referenced_security_group_id = aws_security_group.ray_head.id
  ip_protocol                  = "tcp"
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_egress_rule" "worker_to_workers" {
  for_each = local.ray_cluster_port_ranges

  security_group_id            = aws_security_group.ray_worker.id
  description                  = "Ray workers to workers: ${each.key}"
  referenced_security_group_id = aws_security_group.ray_worker.id
  ip_protocol                  = "tcp"
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_egress_rule" "s3" {
  for_each = {
    head   = aws_security_group.ray_head.id
    worker = aws_security_group.ray_worker.id
    client = aws_security_group.ray_client.id
  }

  security_group_id = each.value
  description       = "HTTPS to S3 through the gateway endpoint"
  prefix_list_id    = aws_vpc_endpoint.s3.prefix_list_id
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "client_to_head" {
  for_each = toset([for p in var.ray_client_ports : tostring(p)])

  security_group_id            = aws_security_group.ray_client.id
  description                  = "Ray client to head port ${each.value}"
  referenced_security_group_id = aws_security_group.ray_head.id
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
}

resource "aws_vpc_security_group_egress_rule" "client_https" {
  count = var.enable_nat_gateway ? 1 : 0

  security_group_id = aws_security_group.ray_client.id
  description       = "HTTPS to the Prefect API, the image registry and AWS APIs through the NAT gateway"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}
