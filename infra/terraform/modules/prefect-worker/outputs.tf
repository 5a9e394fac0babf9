output "work_pool_name" {
  description = "Prefect work pool (type ecs) served by the worker."
  value       = var.work_pool_name
}

output "ecs_cluster_name" {
  description = "ECS cluster running the worker and the flow-run tasks."
  value       = aws_ecs_cluster.this.name
}

output "worker_service_name" {
  description = "ECS service of the Prefect worker."
  value       = aws_ecs_service.worker.name
}

output "flow_run_task_definition_arn" {
  description = "Task definition the worker starts for each flow run."
  value       = aws_ecs_task_definition.flow_run.arn
}

output "role_arns" {
  description = "IAM role ARNs: execution, worker, flow_run."
  value = {
    execution = aws_iam_role.execution.arn
    worker    = aws_iam_role.worker.arn
    flow_run  = aws_iam_role.flow_run.arn
  }
}

output "log_group_name" {
  description = "CloudWatch log group of the worker (stream prefix worker/) and flow runs (flow-run/)."
  value       = aws_cloudwatch_log_group.this.name
}

output "work_pool_job_variables" {
  description = "Job variables for deployments on the ECS work pool (prefect-aws ECS worker): pass them as a deployment's job_variables or merge them into the pool's base job template."
  value = {
    cluster                   = aws_ecs_cluster.this.arn
    task_definition_arn       = aws_ecs_task_definition.flow_run.arn
    launch_type               = "FARGATE"
    vpc_id                    = var.vpc_id
    container_name            = local.prefect_container_name
    task_role_arn             = aws_iam_role.flow_run.arn
    execution_role_arn        = aws_iam_role.execution.arn
    configure_cloudwatch_logs = false
    network_configuration = {
      subnets        = var.subnet_ids
      securityGroups = var.security_group_ids
      assignPublicIp = "DISABLED"
    }
    env = { RAY_ADDRESS = var.ray_address }
  }
}
