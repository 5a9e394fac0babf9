# The whole reelflow stack: the four modules composed. envs/dev and envs/prod are thin roots that
# call this module with their provider, backend and environment-specific sizing.

module "data_lake" {
  source = "../data-lake"

  create_autoscaling_service_linked_role = var.create_autoscaling_service_linked_role
  name_prefix                            = var.name_prefix
  noncurrent_version_expiration_days     = var.noncurrent_version_expiration_days
  force_destroy                          = var.force_destroy
}

module "network" {
  source = "../network"

  name_prefix          = var.name_prefix
  vpc_cidr             = var.vpc_cidr
  availability_zones   = var.availability_zones
  enable_nat_gateway   = true
  flow_log_kms_key_arn = module.data_lake.kms_key_arn
}

module "ray_cluster" {
  source = "../ray-cluster"

  name_prefix              = var.name_prefix
  subnet_ids               = module.network.private_subnet_ids
  head_security_group_id   = module.network.ray_head_security_group_id
  worker_security_group_id = module.network.ray_worker_security_group_id
  kms_key_arn              = module.data_lake.kms_key_arn

  raw_video_bucket_arn      = module.data_lake.bucket_arns["raw_video"]
  curated_shards_bucket_arn = module.data_lake.bucket_arns["curated_shards"]
  checkpoints_bucket_arn    = module.data_lake.bucket_arns["checkpoints"]

  cpu_ami_id     = var.cpu_ami_id
  gpu_ami_id     = var.gpu_ami_id
  ray_executable = var.ray_executable

  head_instance_type          = var.head_instance_type
  cpu_worker_instance_type    = var.cpu_worker_instance_type
  cpu_worker_min_size         = var.cpu_worker_min_size
  cpu_worker_max_size         = var.cpu_worker_max_size
  cpu_worker_desired_capacity = var.cpu_worker_desired_capacity
  gpu_worker_instance_type    = var.gpu_worker_instance_type
  gpu_worker_max_size         = var.gpu_worker_max_size
  gpu_worker_desired_capacity = var.gpu_worker_desired_capacity
}

module "prefect_worker" {
  source = "../prefect-worker"

  name_prefix                 = var.name_prefix
  work_pool_name              = var.work_pool_name
  prefect_api_url             = var.prefect_api_url
  prefect_api_key_secret_arn  = var.prefect_api_key_secret_arn
  prefect_api_key_kms_key_arn = var.prefect_api_key_kms_key_arn
  vpc_id                      = module.network.vpc_id
  subnet_ids                  = module.network.private_subnet_ids
  security_group_ids          = [module.network.ray_client_security_group_id]
  worker_image                = var.prefect_worker_image
  flow_run_image              = var.flow_run_image
  ray_address                 = module.ray_cluster.ray_client_address
  kms_key_arn                 = module.data_lake.kms_key_arn
  raw_video_bucket_arn        = module.data_lake.bucket_arns["raw_video"]
  curated_shards_bucket_arn   = module.data_lake.bucket_arns["curated_shards"]
}
