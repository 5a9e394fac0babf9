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
    defaults = { arn = "arn:aws:iam::123456789012:role/reelflow-test-vpc-flow-logs" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/reelflow/test/vpc-flow-logs" }
  }
}

variables {
  name_prefix          = "reelflow-test"
  vpc_cidr             = "10.40.0.0/16"
  availability_zones   = ["eu-west-1a", "eu-west-1b"]
  flow_log_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
}

run "private_subnets_and_s3_endpoint" {
  command = apply

  assert {
    condition     = length(aws_subnet.private) == 2 && alltrue([for s in aws_subnet.private : !s.map_public_ip_on_launch])
    error_message = "One private subnet per AZ, none assigning public IPs."
  }

  assert {
    condition     = aws_subnet.private[0].cidr_block == "10.40.0.0/20" && aws_subnet.private[1].cidr_block == "10.40.16.0/20"
    error_message = "Private subnets are /20s from the bottom of the VPC range."
  }

  assert {
    condition     = aws_subnet.public[0].cidr_block == "10.40.255.0/24"
    error_message = "The NAT subnet is the last /24 of the VPC range."
  }

  assert {
    condition     = aws_vpc_endpoint.s3.vpc_endpoint_type == "Gateway" && aws_vpc_endpoint.s3.service_name == "com.amazonaws.eu-west-1.s3"
    error_message = "S3 must be reached through a gateway endpoint."
  }

  assert {
    condition     = contains(aws_vpc_endpoint.s3.route_table_ids, aws_route_table.private.id)
    error_message = "The S3 endpoint must be routed from the private subnets."
  }

  assert {
    condition     = aws_flow_log.this.traffic_type == "ALL" && aws_cloudwatch_log_group.flow_logs.kms_key_id == var.flow_log_kms_key_arn
    error_message = "VPC flow logs must capture all traffic into a KMS-encrypted log group."
  }

  assert {
    condition     = length(aws_default_security_group.this.ingress) == 0 && length(aws_default_security_group.this.egress) == 0
    error_message = "The default security group must allow nothing."
  }
}

run "ray_ports_are_not_public" {
  command = apply

  assert {
    condition = alltrue([
      for r in concat(
        values(aws_vpc_security_group_ingress_rule.head_from_workers),
        values(aws_vpc_security_group_ingress_rule.worker_from_head),
        values(aws_vpc_security_group_ingress_rule.worker_from_workers),
        values(aws_vpc_security_group_ingress_rule.head_from_clients),
      ) : r.cidr_ipv4 == null && r.cidr_ipv6 == null && r.prefix_list_id == null && r.referenced_security_group_id != null
    ])
    error_message = "Every Ray ingress rule must reference a security group, never a CIDR."
  }

  assert {
    condition     = alltrue([for r in values(aws_vpc_security_group_ingress_rule.head_from_workers) : r.referenced_security_group_id == aws_security_group.ray_worker.id])
    error_message = "The head accepts cluster traffic from the worker group only."
  }

  assert {
    condition = alltrue([
      for r in concat(values(aws_vpc_security_group_ingress_rule.head_from_workers), values(aws_vpc_security_group_ingress_rule.worker_from_workers)) :
      !(r.from_port <= 22 && r.to_port >= 22) && !(r.from_port <= 3389 && r.to_port >= 3389) && r.to_port - r.from_port < 10000
    ])
    error_message = "Cluster rules open Ray's pinned port ranges only (no SSH, no RDP, no full range)."
  }

  assert {
    condition = alltrue([
      for r in values(aws_vpc_security_group_ingress_rule.head_from_clients) :
      r.referenced_security_group_id == aws_security_group.ray_client.id && r.from_port == r.to_port && contains([10001, 8265], r.from_port)
    ])
    error_message = "Dashboard (8265) and Ray Client (10001) are reachable from the client group only, one port per rule."
  }

  assert {
    condition = alltrue([
      for r in concat(values(aws_vpc_security_group_egress_rule.head_to_workers), values(aws_vpc_security_group_egress_rule.worker_to_head), values(aws_vpc_security_group_egress_rule.worker_to_workers)) :
      r.cidr_ipv4 == null
    ]) && alltrue([for r in values(aws_vpc_security_group_egress_rule.s3) : r.prefix_list_id == aws_vpc_endpoint.s3.prefix_list_id && r.from_port == 443])
    error_message = "Ray nodes egress only to the cluster and to S3 through the endpoint."
  }
}

run "no_nat_means_no_internet_egress" {
  command = apply

  variables {
    enable_nat_gateway = false
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 0 && length(aws_internet_gateway.this) == 0 && length(aws_vpc_security_group_egress_rule.client_https) == 0
    error_message = "Without the NAT gateway there is no internet gateway and no internet egress rule."
  }
}

run "rejects_short_flow_log_retention" {
  command = plan

  variables {
    flow_log_retention_days = 30
  }

  expect_failures = [var.flow_log_retention_days]
}
