"""The label and annotation keys gpufleet writes or reads, part of its API like the kinds:
users select on them (a pool's copies, a provider's nodes), and other tools must not reuse
them. One place, so that a key is never spelt two ways."""

from __future__ import annotations

from gpufleet.api.common import GROUP

# On nodes (by the Simulated driver, or by the user's node templates elsewhere) and on
# remote copies: which provider, node pool and GPU type they belong to.
PROVIDER_LABEL = f"{GROUP}/provider"
NODE_POOL_LABEL = f"{GROUP}/node-pool"
GPU_TYPE_LABEL = f"{GROUP}/gpu-type"
# On a burst copy: the pool it serves (`<namespace>.<name>`), its source and template hash.
POOL_LABEL = f"{GROUP}/pool"
SOURCE_ANNOTATION = f"{GROUP}/source"
SOURCE_HASH_ANNOTATION = f"{GROUP}/source-hash"
# On a namespace of a remote cluster that gpufleet created (and so may delete).
CREATED_BY_LABEL = f"{GROUP}/created-by"
# On everything gpufleet makes in a remote cluster (copies, their Services, namespaces): the
# installation (`--installation`) that made it, the only one that changes or deletes it.
INSTALLATION_LABEL = f"{GROUP}/installation"
# On a CloudProvider with a remote cluster: its copies there go before it does. Not kopf's
# own finalizer (`gpufleet.io/finalizer`): kopf removes that one from kinds it has no
# deletion handlers for.
REMOTE_COPIES_FINALIZER = f"{GROUP}/remote-copies"
# The label the docs advise on every pooled workload's pod template, for an operator that
# watches only labelled pods (`--pod-label-selector gpufleet.io/serving=true`).
SERVING_LABEL = f"{GROUP}/serving"
# The id of the action that last resized a backend object (intent record, drivers).
ACTION_ANNOTATION = f"{GROUP}/action-id"
# On a Cluster API MachinePool: the instances (provider IDs, comma-separated) a scale-down
# has counted, so that a retry does not count them again while the provider removes some.
REMOVING_NODES_ANNOTATION = f"{GROUP}/removing-nodes"
# A simulated node's ordinal in its node pool.
ORDINAL_ANNOTATION = f"{GROUP}/ordinal"
# The field manager of every write the operator and its drivers make, so that GitOps tools
# can tell the operator's fields from theirs (docs/gitops.md).
FIELD_MANAGER = "gpufleet"
