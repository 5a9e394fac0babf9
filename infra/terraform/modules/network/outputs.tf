output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "IDs of the private subnets (one per availability zone) for Ray nodes and the Prefect worker."
  value       = aws_subnet.private[*].id
}

output "private_route_table_id" {
  description = "ID of the private route table (holds the S3 gateway endpoint route)."
  value       = aws_route_table.private.id
}

output "s3_endpoint_id" {
  description = "ID of the S3 gateway VPC endpoint."
  value       = aws_vpc_endpoint.s3.id
}

output "ray_head_security_group_id" {
  description = "Security group of the Ray head node."
  value       = aws_security_group.ray_head.id
}

output "ray_worker_security_group_id" {
  description = "Security group of the Ray worker nodes."
  value       = aws_security_group.ray_worker.id
}

output "ray_client_security_group_id" {
  description = "Security group for Ray clients (Prefect worker and flow runs)."
  value       = aws_security_group.ray_client.id
}

output "ray_cluster_port_ranges" {
  description = "TCP port ranges open between Ray nodes (must match the ray-cluster module's `ray start` port flags)."
  value       = local.ray_cluster_port_ranges
}
