output "kms_key_arn" {
  description = "ARN of the customer-managed KMS key (rotation on) that encrypts the buckets, log groups and Ray EBS volumes."
  value       = aws_kms_key.lake.arn
}

output "bucket_names" {
  description = "Bucket names by role: raw_video, curated_shards, checkpoints."
  value       = { for k, b in aws_s3_bucket.lake : k => b.bucket }
}

output "bucket_arns" {
  description = "Bucket ARNs by role: raw_video, curated_shards, checkpoints."
  value       = { for k, b in aws_s3_bucket.lake : k => b.arn }
}

output "raw_video_bucket" {
  description = "Name of the raw-video bucket (curation SOURCE: s3://<name>/...)."
  value       = aws_s3_bucket.lake["raw_video"].bucket
}

output "curated_shards_bucket" {
  description = "Name of the curated-shards bucket (curation OUTPUT: s3://<name>/...)."
  value       = aws_s3_bucket.lake["curated_shards"].bucket
}

output "checkpoints_bucket" {
  description = "Name of the training-checkpoint bucket."
  value       = aws_s3_bucket.lake["checkpoints"].bucket
}

output "access_logs_bucket" {
  description = "Name of the bucket receiving S3 server access logs of the data-lake buckets."
  value       = aws_s3_bucket.access_logs.bucket
}
