variable "name_prefix" {
  description = "Prefix for resource names, e.g. \"reelflow-prod\"."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnet IDs for the Ray nodes. The head's network interface lives in the first one."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "Give at least one private subnet."
  }
}

variable "head_security_group_id" {
  description = "Security group of the head node (network module output ray_head_security_group_id)."
  type        = string
}

variable "worker_security_group_id" {
  description = "Security group of the worker nodes (network module output ray_worker_security_group_id)."
  type        = string
}

variable "kms_key_arn" {
  description = "ARN of the data-lake KMS key: encrypts node EBS volumes and the S3 objects the workers read and write."
  type        = string
}

variable "raw_video_bucket_arn" {
  description = "ARN of the raw-video bucket. Curation workers may read it; nothing here may write it."
  type        = string
}

variable "curated_shards_bucket_arn" {
  description = "ARN of the curated-shards bucket. Curation workers write it; training workers read it."
  type        = string
}

variable "checkpoints_bucket_arn" {
  description = "ARN of the checkpoint bucket. Training workers read and write it."
  type        = string
}

variable "cpu_ami_id" {
  description = "AMI for the head and the curation CPU workers, with Ray, ffmpeg and reelflow preinstalled (nodes have no internet access)."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.cpu_ami_id))
    error_message = "cpu_ami_id must look like ami-0123456789abcdef0."
  }
}

variable "gpu_ami_id" {
  description = "AMI for the training GPU workers (NVIDIA driver, CUDA, PyTorch, Ray and reelflow preinstalled)."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.gpu_ami_id))
    error_message = "gpu_ami_id must look like ami-0123456789abcdef0."
  }
}

variable "ray_executable" {
  description = "Absolute path of the `ray` CLI on the AMIs."
  type        = string
  default     = "/opt/reelflow/venv/bin/ray"

  validation {
    condition     = startswith(var.ray_executable, "/")
    error_message = "ray_executable must be an absolute path."
  }
}

variable "ray_os_user" {
  description = "Unprivileged OS user that runs the Ray processes (created at boot if missing)."
  type        = string
  default     = "ray"
}

variable "root_device_name" {
  description = "Root block device name of the AMIs (/dev/xvda for Amazon Linux, /dev/sda1 for Ubuntu)."
  type        = string
  default     = "/dev/xvda"
}

variable "head_instance_type" {
  description = "Instance type of the head node (it schedules, it does not run tasks: --num-cpus=0)."
  type        = string
  default     = "m7i.2xlarge"
}

variable "head_volume_size_gb" {
  description = "Root volume size of the head node, GiB."
  type        = number
  default     = 100
}

variable "cpu_worker_instance_type" {
  description = "Instance type of the curation CPU workers (decode, transcode, scoring)."
  type        = string
  default     = "c7i.8xlarge"
}

variable "cpu_worker_volume_size_gb" {
  description = "Root volume size of a curation worker, GiB (holds Ray's object spill and ffmpeg scratch)."
  type        = number
  default     = 500
}

variable "cpu_worker_min_size" {
  description = "Minimum number of curation CPU workers."
  type        = number
  default     = 0

  validation {
    condition     = var.cpu_worker_min_size >= 0
    error_message = "cpu_worker_min_size must be >= 0."
  }
}

variable "cpu_worker_max_size" {
  description = "Maximum number of curation CPU workers."
  type        = number
  default     = 8
}

variable "cpu_worker_desired_capacity" {
  description = "Desired number of curation CPU workers."
  type        = number
  default     = 2
}

variable "gpu_worker_instance_type" {
  description = "Instance type of the training GPU workers."
  type        = string
  default     = "g6e.12xlarge"
}

variable "gpu_worker_volume_size_gb" {
  description = "Root volume size of a training worker, GiB."
  type        = number
  default     = 500
}

variable "gpu_worker_max_size" {
  description = "Maximum number of training GPU workers. The group's minimum is always 0 so it scales to zero."
  type        = number
  default     = 4

  validation {
    condition     = var.gpu_worker_max_size >= 1
    error_message = "gpu_worker_max_size must be >= 1."
  }
}

variable "gpu_worker_desired_capacity" {
  description = "Desired number of training GPU workers; 0 when no training runs (raise it, or set it with `aws autoscaling set-desired-capacity`, before a training run)."
  type        = number
  default     = 0

  validation {
    condition     = var.gpu_worker_desired_capacity >= 0
    error_message = "gpu_worker_desired_capacity must be >= 0."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
