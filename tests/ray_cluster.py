"""A Ray cluster of several nodes on this machine, in its own process (``ray.cluster_utils``).

    python tests/ray_cluster.py NODES CPUS_PER_NODE    # prints the GCS address, then waits

Each node is a real raylet with its own resources; tasks scheduled on it run in its own worker
processes. The cluster lives in a separate process so that a test process already connected to
another Ray (the session's) can start and stop it without touching its own; closing this
process's stdin shuts the cluster down.
"""

from __future__ import annotations

import sys


def main() -> None:
    from ray.cluster_utils import Cluster

    nodes, cpus = int(sys.argv[1]), int(sys.argv[2])
    # Small object stores: the default (30% of RAM per node) would overcommit a 24 GiB machine.
    args = {"num_cpus": cpus, "object_store_memory": 256 * 1024**2}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={**args, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**args)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin (or dies)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
