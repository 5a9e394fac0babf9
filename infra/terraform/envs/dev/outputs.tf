output "ray_address" {
  description = "RAY_ADDRESS for drivers outside the cluster (Prefect flow runs, a bastion): Ray Client on the head."
  value       = module.stack.ray_address
}

output "ray_gcs_address" {
  description = "GCS address of the head (for `ray start --address` on extra nodes inside the VPC)."
  value       = module.stack.ray_gcs_address
}

output "ray_dashboard_url" {
  description = "Ray dashboard / Jobs API, reachable from the Ray client security group."
  value       = module.stack.ray_dashboard_url
}

output "bucket_names" {
  description = "Data-lake bucket names: raw_video, curated_shards, checkpoints."
  value       = module.stack.bucket_names
}

output "raw_video_uri" {
  description = "s3:// URI to use as the curate flow's SOURCE."
  value       = module.stack.raw_video_uri
}

output "curated_shards_uri" {
  description = "s3:// URI to use as the curate flow's OUTPUT."
  value       = module.stack.curated_shards_uri
}

output "checkpoints_uri" {
  description = "s3:// URI for training checkpoints."
  value       = module.stack.checkpoints_uri
}

output "work_pool_name" {
  description = "Prefect work pool served by the ECS worker."
  value       = module.stack.work_pool_name
}

output "work_pool_job_variables" {
  description = "Job variables for deployments on the work pool (cluster, task definition, network, roles, RAY_ADDRESS)."
  value       = module.stack.work_pool_job_variables
}

output "prefect_api_url" {
  description = "PREFECT_API_URL the worker and flow runs use."
  value       = module.stack.prefect_api_url
}

output "ecs_cluster_name" {
  description = "ECS cluster of the Prefect worker and flow runs."
  value       = module.stack.ecs_cluster_name
}

output "worker_autoscaling_group_names" {
  description = "Auto Scaling groups of the Ray workers (curation_cpu, training_gpu); scale training_gpu up before a training run."
  value       = module.stack.worker_autoscaling_group_names
}
