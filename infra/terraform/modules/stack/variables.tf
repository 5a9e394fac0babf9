# ---------------------------------------------------------------------------- naming & network

variable "name_prefix" {
  description = "Prefix of every resource name; bucket names derive from it, so make it globally unique (e.g. include your org)."
  type        = string
}

variable "availability_zones" {
  description = "Availability zones for the private subnets (pick zones that offer the GPU instance type)."
  type        = list(string)
}

variable "vpc_cidr" {
  description = "IPv4 CIDR block of the VPC."
  type        = string
  default     = "10.40.0.0/16"
}

# ---------------------------------------------------------------------------- data lake

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete non-empty buckets. Only for throwaway (dev) stacks."
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent (overwritten or deleted) object versions are expired, in every bucket."
  type        = number
  default     = 30
}

variable "create_autoscaling_service_linked_role" {
  description = "Create the EC2 Auto Scaling service-linked role (only in accounts that have never used Auto Scaling; the KMS key policy names it)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------- Ray cluster

variable "cpu_ami_id" {
  description = "AMI for the Ray head and curation CPU workers, with Ray, ffmpeg and reelflow preinstalled."
  type        = string
}

variable "gpu_ami_id" {
  description = "AMI for the training GPU workers (NVIDIA driver, CUDA, PyTorch, Ray and reelflow preinstalled)."
  type        = string
}

variable "ray_executable" {
  description = "Absolute path of the `ray` CLI on the AMIs."
  type        = string
  default     = "/opt/reelflow/venv/bin/ray"
}

variable "head_instance_type" {
  description = "Instance type of the Ray head (schedules only, runs no tasks)."
  type        = string
  default     = "m7i.2xlarge"
}

variable "cpu_worker_instance_type" {
  description = "Instance type of the curation CPU workers."
  type        = string
}

variable "cpu_worker_min_size" {
  description = "Minimum number of curation CPU workers (0 lets the group scale to zero)."
  type        = number
  default     = 0
}

variable "cpu_worker_max_size" {
  description = "Maximum number of curation CPU workers."
  type        = number
}

variable "cpu_worker_desired_capacity" {
  description = "Desired number of curation CPU workers."
  type        = number
}

variable "gpu_worker_instance_type" {
  description = "Instance type of the training GPU workers."
  type        = string
}

variable "gpu_worker_max_size" {
  description = "Maximum number of training GPU workers (the group's minimum is always 0)."
  type        = number
}

variable "gpu_worker_desired_capacity" {
  description = "Desired number of training GPU workers; keep 0 between training runs."
  type        = number
  default     = 0
}

# ---------------------------------------------------------------------------- Prefect worker

variable "work_pool_name" {
  description = "Prefect work pool (type ecs) that the worker serves and deployments target."
  type        = string
}

variable "prefect_api_url" {
  description = "PREFECT_API_URL of the Prefect Cloud workspace or self-hosted server (https)."
  type        = string
}

variable "prefect_api_key_secret_arn" {
  description = "ARN of the existing Secrets Manager secret that holds the Prefect API key."
  type        = string
}

variable "prefect_api_key_kms_key_arn" {
  description = "Customer-managed KMS key of that secret, or null for the AWS-managed key."
  type        = string
  default     = null
}

variable "prefect_worker_image" {
  description = "Prefect worker image (prefect + prefect-aws)."
  type        = string
}

variable "flow_run_image" {
  description = "reelflow image that flow runs execute in."
  type        = string
}
