"""Burst copies: a pool's workload copied into a secondary provider's own cluster, the
kubeconfig that reaches it, and the namespaces the copies need there (docs/burst.md)."""
