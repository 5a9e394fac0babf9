output "ray_address" {
  description = "RAY_ADDRESS for drivers outside the cluster (Prefect flow runs, a bastion): Ray Client on the head."
  value       = module.ray_cluster.ray_client_address
}

output "ray_gcs_address" {
  description = "GCS address of the head (for `ray start --address` on extra nodes inside the VPC)."
  value       = module.ray_cluster.ray_address
}

output "ray_dashboard_url" {
  description = "Ray dashboard / Jobs API, reachable from the Ray client security group."
  value       = module.ray_cluster.dashboard_url
}

output "bucket_names" {
  description = "Data-lake bucket names: raw_video, curated_shards, checkpoints."
  value       = module.data_lake.bucket_names
}

output "raw_video_uri" {
  description = "s3:// URI to use as the curate flow's SOURCE."
  value       = "s3://${module.data_lake.raw_video_bucket}/"
}

output "curated_shards_uri" {
  description = "s3:// URI to use as the curate flow's OUTPUT."
  value       = "s3://${module.data_lake.curated_shards_bucket}/"
}

output "checkpoints_uri" {
  description = "s3:// URI for training checkpoints."
  value       = "s3://${module.data_lake.checkpoints_bucket}/"
}

output "work_pool_name" {
  description = "Prefect work pool served by the ECS worker."
  value       = module.prefect_worker.work_pool_name
}

output "work_pool_job_variables" {
  description = "Job variables for deployments on the work pool (cluster, task definition, network, roles, RAY_ADDRESS)."
  value       = module.prefect_worker.work_pool_job_variables
}

output "prefect_api_url" {
  description = "PREFECT_API_URL the worker and flow runs use."
  value       = var.prefect_api_url
}

output "ecs_cluster_name" {
  description = "ECS cluster of the Prefect worker and flow runs."
  value       = module.prefect_worker.ecs_cluster_name
}

output "worker_autoscaling_group_names" {
  description = "Auto Scaling groups of the Ray workers (curation_cpu, training_gpu); scale training_gpu up before a training run."
  value       = module.ray_cluster.worker_autoscaling_group_names
}
