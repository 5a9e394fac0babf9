variable "name_prefix" {
  description = "Prefix for resource names, e.g. \"reelflow-prod\"."
  type        = string
}

variable "work_pool_name" {
  description = "Name of the Prefect work pool (type ecs) the worker polls; the worker creates it on first start if it does not exist."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", var.work_pool_name))
    error_message = "work_pool_name must be 1-63 letters, digits, '-' or '_'."
  }
}

variable "prefect_api_url" {
  description = "PREFECT_API_URL for the worker and flow runs, e.g. https://api.prefect.cloud/api/accounts/<id>/workspaces/<id> or a self-hosted server URL."
  type        = string

  validation {
    condition     = startswith(var.prefect_api_url, "https://")
    error_message = "prefect_api_url must use https://."
  }
}

variable "prefect_api_key_secret_arn" {
  description = "ARN of an existing Secrets Manager secret holding the Prefect API key (plain string). Created out of band so that the key never enters Terraform state."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", var.prefect_api_key_secret_arn))
    error_message = "prefect_api_key_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "prefect_api_key_kms_key_arn" {
  description = "ARN of the customer-managed KMS key that encrypts the API-key secret, or null when it uses the AWS-managed key."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Private subnets for the worker service and the flow-run tasks."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the worker and flow-run tasks: the network module's Ray client group (reaches the Ray head's client port; HTTPS out)."
  type        = list(string)
}

variable "vpc_id" {
  description = "VPC of the subnets (passed to the work pool's job variables)."
  type        = string
}

variable "worker_image" {
  description = "Container image of the Prefect worker. It must contain prefect and prefect-aws (the ECS worker type), and be pullable without ECR credentials, e.g. the project image."
  type        = string
}

variable "flow_run_image" {
  description = "Container image the flow runs execute in: reelflow with its dependencies (the same Ray and Python versions as the cluster)."
  type        = string
}

variable "worker_cpu" {
  description = "Fargate CPU units of the worker task."
  type        = number
  default     = 512
}

variable "worker_memory" {
  description = "Fargate memory (MiB) of the worker task."
  type        = number
  default     = 1024
}

variable "flow_run_cpu" {
  description = "Fargate CPU units of a flow-run task (the flow only drives the Ray cluster)."
  type        = number
  default     = 1024
}

variable "flow_run_memory" {
  description = "Fargate memory (MiB) of a flow-run task."
  type        = number
  default     = 4096
}

variable "ray_address" {
  description = "RAY_ADDRESS given to flow runs: the ray-cluster module's ray_client_address (ray://<head>:10001)."
  type        = string

  validation {
    condition     = startswith(var.ray_address, "ray://")
    error_message = "Flow runs reach the cluster through Ray Client: ray_address must start with ray://."
  }
}

variable "kms_key_arn" {
  description = "ARN of the data-lake KMS key: encrypts the log group and the objects flow runs read and write."
  type        = string
}

variable "raw_video_bucket_arn" {
  description = "ARN of the raw-video bucket. Flow runs list and read sources and manifests."
  type        = string
}

variable "curated_shards_bucket_arn" {
  description = "ARN of the curated-shards bucket. Flow runs write the ledger, index and report and read stage tables."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the worker and flow-run log group, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "Keep logs for at least a year, as a CloudWatch-supported retention value (365, 400, 545, 731, ...)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
