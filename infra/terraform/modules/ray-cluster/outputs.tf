output "head_private_ip" {
  description = "Private IP of the Ray head (stable across head replacement)."
  value       = local.head_ip
}

output "ray_address" {
  description = "GCS address of the cluster (`ray start --address` / RAY_ADDRESS for processes inside the VPC on cluster nodes)."
  value       = "${local.head_ip}:6379"
}

output "ray_client_address" {
  description = "Ray Client address for drivers outside the cluster, e.g. Prefect flow runs: RAY_ADDRESS=ray://<head>:10001."
  value       = "ray://${local.head_ip}:10001"
}

output "dashboard_url" {
  description = "Ray dashboard and Jobs API (reachable from the Ray client security group only)."
  value       = "http://${local.head_ip}:8265"
}

output "head_instance_id" {
  description = "EC2 instance ID of the Ray head."
  value       = aws_instance.head.id
}

output "worker_autoscaling_group_names" {
  description = "Auto Scaling group names: curation_cpu and training_gpu."
  value       = { curation_cpu = aws_autoscaling_group.curation_cpu.name, training_gpu = aws_autoscaling_group.training_gpu.name }
}

output "node_role_arns" {
  description = "IAM role ARNs of the node kinds: head, curation, training."
  value       = { for k, r in aws_iam_role.node : k => r.arn }
}

output "worker_group_sizes" {
  description = "Size bounds of the worker Auto Scaling groups (curation_cpu, training_gpu): min_size, max_size, desired_capacity."
  value = {
    for k, g in { curation_cpu = aws_autoscaling_group.curation_cpu, training_gpu = aws_autoscaling_group.training_gpu } :
    k => { min_size = g.min_size, max_size = g.max_size, desired_capacity = g.desired_capacity }
  }
}

output "s3_bucket_arns_by_role" {
  description = "Bucket ARNs named by the S3 statements of each worker role's policy (curation, training); the head has none."
  value = {
    for k, doc in { curation = data.aws_iam_policy_document.curation, training = data.aws_iam_policy_document.training } :
    k => sort(distinct(flatten([
      for s in doc.statement : [for r in s.resources : trimsuffix(r, "/*")]
      if anytrue([for a in s.actions : startswith(a, "s3:")])
    ])))
  }
}
