provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "reelflow:environment" = "prod"
      "reelflow:managed-by"  = "terraform"
    })
  }
}

module "stack" {
  source = "../../modules/stack"

  # What makes prod prod: data is kept, a larger head, at least one curation worker always up.
  # Production data is never deleted by `terraform destroy`.
  force_destroy                      = false
  noncurrent_version_expiration_days = 30
  head_instance_type                 = "m7i.2xlarge"
  cpu_worker_min_size                = 1

  name_prefix                            = var.name_prefix
  availability_zones                     = var.availability_zones
  vpc_cidr                               = var.vpc_cidr
  create_autoscaling_service_linked_role = var.create_autoscaling_service_linked_role

  cpu_ami_id                  = var.cpu_ami_id
  gpu_ami_id                  = var.gpu_ami_id
  ray_executable              = var.ray_executable
  cpu_worker_instance_type    = var.cpu_worker_instance_type
  cpu_worker_max_size         = var.cpu_worker_max_size
  cpu_worker_desired_capacity = var.cpu_worker_desired_capacity
  gpu_worker_instance_type    = var.gpu_worker_instance_type
  gpu_worker_max_size         = var.gpu_worker_max_size
  gpu_worker_desired_capacity = var.gpu_worker_desired_capacity

  work_pool_name              = var.work_pool_name
  prefect_api_url             = var.prefect_api_url
  prefect_api_key_secret_arn  = var.prefect_api_key_secret_arn
  prefect_api_key_kms_key_arn = var.prefect_api_key_kms_key_arn
  prefect_worker_image        = var.prefect_worker_image
  flow_run_image              = var.flow_run_image
}
