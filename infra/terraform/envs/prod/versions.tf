terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }

  # Partial configuration: supply bucket, key, region and dynamodb_table (or use_lockfile)
  # with `terraform init -backend-config=backend.hcl`. State is encrypted at rest.
  backend "s3" {
    encrypt = true
  }
}
