variable "name_prefix" {
  description = "Prefix for every bucket and key name, e.g. \"reelflow-prod\". Bucket names are global, so include an account or org suffix if needed."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{2,40}$", var.name_prefix))
    error_message = "name_prefix must be 3-41 lowercase letters, digits or hyphens."
  }
}

variable "raw_video_ia_transition_days" {
  description = "Days after which current raw-video objects move to STANDARD_IA (raw video is read once per curation run)."
  type        = number
  default     = 30

  validation {
    condition     = var.raw_video_ia_transition_days >= 30
    error_message = "S3 only allows transitions to STANDARD_IA after at least 30 days."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent (overwritten or deleted) object versions are expired, in every bucket."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which incomplete multipart uploads (interrupted shard or checkpoint writes) are aborted."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1
    error_message = "abort_incomplete_multipart_days must be at least 1."
  }
}

variable "access_log_retention_days" {
  description = "Days to keep S3 server access logs."
  type        = number
  default     = 365
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the data-lake KMS key is deleted after destroy."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

variable "create_autoscaling_service_linked_role" {
  description = "Create the AWSServiceRoleForAutoScaling service-linked role. The lake key's policy names it (Auto Scaling launches Ray workers with KMS-encrypted volumes) and KMS rejects policies naming a role that does not exist yet; set true in accounts that have never used EC2 Auto Scaling."
  type        = bool
  default     = false
}

variable "force_destroy" {
  description = "Allow terraform destroy to delete non-empty buckets. Keep false outside throwaway dev stacks."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
