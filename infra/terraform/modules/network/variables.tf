variable "name_prefix" {
  description = "Prefix for resource names and Name tags, e.g. \"reelflow-prod\"."
  type        = string
}

variable "vpc_cidr" {
  description = "IPv4 CIDR block of the VPC. Private subnets are carved out of it as /20s (public NAT subnet as a /24 at the top)."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be a valid IPv4 CIDR of size /18 or larger."
  }
}

variable "availability_zones" {
  description = "Availability zones that get one private subnet each (2-3 recommended; GPU capacity differs per zone)."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 1 && length(var.availability_zones) <= 4
    error_message = "Give between 1 and 4 availability zones."
  }
}

variable "enable_nat_gateway" {
  description = "Create one public subnet, an internet gateway and a NAT gateway so that the Prefect worker can reach Prefect Cloud or a registry. Ray nodes never get a route to it unless they are in the same private route table (they only need S3, reached through the gateway endpoint)."
  type        = bool
  default     = true
}

variable "ray_client_ports" {
  description = "Head-node ports that Ray clients (the Prefect flow runs) may reach from the client security group: Ray Client server and dashboard/Jobs API."
  type        = list(number)
  default     = [10001, 8265]

  validation {
    condition     = alltrue([for p in var.ray_client_ports : p > 0 && p < 65536])
    error_message = "Ports must be between 1 and 65535."
  }
}

variable "flow_log_kms_key_arn" {
  description = "ARN of the KMS key that encrypts the VPC flow-log group (the data-lake key)."
  type        = string
}

variable "flow_log_retention_days" {
  description = "Retention of the VPC flow-log CloudWatch log group, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "Keep flow logs for at least a year, as a CloudWatch-supported retention value (365, 400, 545, 731, ...)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
