# The modules used to be called from this root directly; they now sit inside modules/stack.
# These blocks carry existing state over to the new addresses: the first plan after the
# refactor shows only moves, no resource is replaced. Keep them until every copy of this
# environment's state has been applied once with the new layout.

moved {
  from = module.data_lake
  to   = module.stack.module.data_lake
}

moved {
  from = module.network
  to   = module.stack.module.network
}

moved {
  from = module.ray_cluster
  to   = module.stack.module.ray_cluster
}

moved {
  from = module.prefect_worker
  to   = module.stack.module.prefect_worker
}
